-- A version of the operator data, bumped by every statement that changes it
-- (the same trigger that notifies the replicas). A replica's periodic check
-- reads this one row and reloads everything only when it moved, so the
-- backstop costs nothing however many credentials and keys there are.
create table switchyard_catalog_version (
    id      boolean primary key default true check (id),
    version bigint not null default 0
);
insert into switchyard_catalog_version default values;

create or replace function switchyard_notify_change() returns trigger
language plpgsql as $$
begin
    update switchyard_catalog_version set version = version + 1;
    perform pg_notify('switchyard_changes', tg_table_name);
    return null;
end
$$;
