-- Mjölnir's own bookkeeping. Apps' tables stay in their own schema (public by default);
-- everything Mjölnir adds lives here, so an app's migrations never collide with it.

-- Commit versions: one sequence for the whole database, so every server instance draws
-- from it. A commit takes its version after it holds the locks of every key it touches,
-- so two commits that share a key get versions in their commit order.
CREATE SEQUENCE mjolnir.commit_version AS bigint;

-- The version of every key that was ever written (rows and kv entries alike). A key with
-- no row here is at version 0 ("never written"). Deleting a row keeps its entry here with
-- the delete's version: re-inserting the key later is a new version, so a transaction
-- that saw the old row or saw it absent conflicts.
CREATE TABLE mjolnir.versions (
    space   text   NOT NULL,  -- app table name, or '' for the key/value store
    pk      text   NOT NULL,  -- primary key in canonical text form
    version bigint NOT NULL,
    PRIMARY KEY (space, pk)
);

-- The key/value store of the paper (`mjolnir.kv`).
CREATE TABLE mjolnir.kv (
    key   text  PRIMARY KEY,
    value jsonb NOT NULL
);

-- Outcome of every committed client transaction id, so a commit re-sent after a lost
-- reply is answered instead of applied twice. Written in the commit's own transaction.
CREATE TABLE mjolnir.txns (
    txn          text        PRIMARY KEY,
    version      bigint      NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT now()
);

-- Change sets too large for a NOTIFY payload (8000 bytes). The notification then only
-- names the version and every instance reads the changes from here.
CREATE TABLE mjolnir.commit_log (
    version      bigint      PRIMARY KEY,
    changes      jsonb       NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT now()
);

-- The identity a transaction runs under, for apps' row-level-security policies:
--   CREATE POLICY own_row ON users FOR UPDATE USING (name = mjolnir.user_id());
CREATE FUNCTION mjolnir.user_id() RETURNS text
    LANGUAGE sql STABLE
    AS $$ SELECT nullif(current_setting('mjolnir.user', true), '') $$;

-- Apps' reads and writes run as this role, which owns nothing, so row-level security
-- and privileges apply to it. Roles are cluster-wide: several databases may share it.
DO $$
BEGIN
    CREATE ROLE mjolnir_app NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

GRANT USAGE ON SCHEMA mjolnir TO mjolnir_app;
GRANT SELECT ON mjolnir.versions TO mjolnir_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON mjolnir.kv TO mjolnir_app;
GRANT EXECUTE ON FUNCTION mjolnir.user_id() TO mjolnir_app;

-- The server's login role must be able to act as mjolnir_app (SET LOCAL ROLE). A
-- superuser already can; granting it anyway would race between databases migrating at once.
DO $$
BEGIN
    IF NOT pg_has_role(current_user, 'mjolnir_app', 'MEMBER') THEN
        GRANT mjolnir_app TO CURRENT_USER;
    END IF;
END
$$;
