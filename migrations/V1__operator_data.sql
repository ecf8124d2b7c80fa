-- switchyard's operator data: the upstream credentials, the models each one
-- serves, and the client keys. Operators manage these with plain SQL.

create table credentials (
    id          text primary key check (id ~ '^[A-Za-z0-9._-]{1,128}$'),
    provider    text not null check (provider in ('openai', 'anthropic', 'gemini')),
    base_url    text not null check (base_url ~ '^https?://'),
    api_key     text not null,
    priority    integer not null default 0,
    weight      integer not null default 1 check (weight > 0),
    enabled     boolean not null default true,
    headers     jsonb not null default '{}' check (jsonb_typeof(headers) = 'object'),
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now()
);

-- Several rows with the same (credential_id, model) form a pool.
create table credential_models (
    credential_id  text references credentials(id) on delete cascade on update cascade,
    model          text not null check (model <> ''),
    upstream_model text not null check (upstream_model <> ''),
    primary key (credential_id, model, upstream_model)
);

create table api_keys (
    name       text primary key,
    key_hash   text not null unique check (key_hash ~ '^[0-9a-f]{64}$'),
    enabled    boolean not null default true,
    expires_at timestamptz,
    created_at timestamptz not null default now()
);

create function switchyard_touch_updated_at() returns trigger
language plpgsql as $$
begin
    new.updated_at := now();
    return new;
end
$$;

create trigger credentials_touch_updated_at
    before update on credentials
    for each row execute function switchyard_touch_updated_at();

-- Every change, TRUNCATE included, tells the replicas to reload.
create function switchyard_notify_change() returns trigger
language plpgsql as $$
begin
    perform pg_notify('switchyard_changes', tg_table_name);
    return null;
end
$$;

create trigger credentials_notify
    after insert or update or delete or truncate on credentials
    for each statement execute function switchyard_notify_change();

create trigger credential_models_notify
    after insert or update or delete or truncate on credential_models
    for each statement execute function switchyard_notify_change();

create trigger api_keys_notify
    after insert or update or delete or truncate on api_keys
    for each statement execute function switchyard_notify_change();
