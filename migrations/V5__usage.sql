-- Usage and limits (contract section 9). A key's limits are plain columns so
-- an operator changes them with one UPDATE; the api_keys trigger of V1 tells
-- every replica to reload, as for any other change to the table.
alter table api_keys
    add column rpm_limit     integer check (rpm_limit >= 0),
    add column tpm_limit     integer check (tpm_limit >= 0),
    add column budget_usd    numeric(14,6) check (budget_usd >= 0),
    add column budget_period text not null default 'month'
        check (budget_period in ('day', 'month')),
    add column models        text[];

-- Prices per million tokens of a requested name or a pattern (`claude-*`),
-- matched like credential_models.model: an exact row beats patterns, the
-- longest pattern beats shorter ones.
create table model_prices (
    model                 text primary key check (model <> ''),
    input_usd_per_mtok    numeric not null check (input_usd_per_mtok >= 0),
    output_usd_per_mtok   numeric not null check (output_usd_per_mtok >= 0),
    cached_usd_per_mtok   numeric check (cached_usd_per_mtok >= 0)
);

create trigger model_prices_notify
    after insert or update or delete or truncate on model_prices
    for each statement execute function switchyard_notify_change();

-- What was used, per UTC minute, key, credential and model. Replicas add to
-- a row with additive upserts, so several replicas may write the same row.
-- credential_id is '' for requests no upstream answered.
create table usage (
    minute             timestamptz not null,
    api_key            text not null,
    credential_id      text not null,
    model              text not null,
    upstream_model     text not null,
    requests           bigint not null default 0,
    errors             bigint not null default 0,
    input_tokens       bigint not null default 0,
    output_tokens      bigint not null default 0,
    cached_tokens      bigint not null default 0,
    cache_write_tokens bigint not null default 0,
    reasoning_tokens   bigint not null default 0,
    cost_usd           numeric(14,6) not null default 0,
    primary key (minute, api_key, credential_id, model, upstream_model)
);

-- The budget's spend per key and period is read by key and time.
create index usage_key_minute on usage (api_key, minute);
