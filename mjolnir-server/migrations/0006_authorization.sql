-- Three authorization holes a security review found in the commit path (docs/architecture.md,
-- "Security model"):
--
--   * Deduplication was keyed by the transaction id alone: a client that committed first
--     under an id another user later used made that user's commit answer `committed`
--     without being applied. A transaction id now belongs to a user: mjolnir.txns is keyed
--     by (app_user, txn). Records written before this migration are kept under the user ''
--     (anonymous); a commit re-sent across the upgrade is then decided afresh, which its
--     reads make a conflict if it had written them.
--
--   * A write that changes nothing (an empty update, an update to the same values, a put of
--     the value already there, the delete of an absent kv entry) drew a new version for its
--     key, so anyone the app's policies let update a row (the bank lets every signed-in
--     user update every account and guards the values in a trigger) could make every
--     transaction that had read the row conflict, over and over. Such a write still runs
--     (the app's policies, CHECKs and triggers see it, and may refuse it), but it no longer
--     changes what the key's readers saw: each key now has two versions,
--       changed: the commit that wrote its current value, and
--       version: the newest commit that wrote it at all (changes included),
--     and a read of version r is current if changed <= r <= version: the value has not
--     changed since r. The writer's own client holds the key at its commit's version,
--     which that rule accepts, while every other reader keeps the version it read. A
--     write that changed nothing is left out of the change set: nobody is pushed it.
--
--   * Whether a table is open to every user (no row-level security, SELECT granted to
--     mjolnir_app) was decided from each instance's catalog, read at start, so row-level
--     security turned on while the server ran was ignored by the change feed until a
--     restart. Each change set now says which of its entries every user may read, decided
--     in the commit itself, under the write's table lock; every other entry is re-read as
--     each subscriber (mjolnir.open_spaces, below).

ALTER TABLE mjolnir.txns ADD COLUMN app_user text NOT NULL DEFAULT '';
ALTER TABLE mjolnir.txns DROP CONSTRAINT txns_pkey;
ALTER TABLE mjolnir.txns ADD PRIMARY KEY (app_user, txn);

ALTER TABLE mjolnir.versions ADD COLUMN changed bigint;
UPDATE mjolnir.versions SET changed = version;
ALTER TABLE mjolnir.versions ALTER COLUMN changed SET NOT NULL;

-- The spaces among `spaces` that every user reads alike, as of now: the kv store (''), and
-- tables of `app_schema` without row-level security whose rows mjolnir_app may SELECT.
-- Anything else (row-level security, no SELECT, a table that no longer exists) is not.
-- A loop of catalog lookups by oid, which the system caches answer: it runs in every commit,
-- and as one query over pg_class it cost about 40 times as much.
CREATE FUNCTION mjolnir.open_spaces(app_schema text, spaces text[]) RETURNS text[]
LANGUAGE plpgsql STABLE AS $$
DECLARE
    open text[] := '{}';
    s text;
    t regclass;
    secured bool;
BEGIN
    FOREACH s IN ARRAY spaces LOOP
        CONTINUE WHEN s = ANY (open);
        IF s = '' THEN
            open := open || s;
            CONTINUE;
        END IF;
        t := to_regclass(format('%I.%I', app_schema, s));
        CONTINUE WHEN t IS NULL;
        SELECT c.relrowsecurity INTO secured FROM pg_class c WHERE c.oid = t;
        IF NOT secured AND has_table_privilege('mjolnir_app', t, 'SELECT') THEN
            open := open || s;
        END IF;
    END LOOP;
    RETURN open;
END
$$;

-- The change set of one transaction as the feed carries it: its version, the entries of the
-- writes that changed something (in write order), and `open`, the 1-based positions among
-- them of the entries every user may read (their space is in open_spaces); the feed
-- re-reads every other entry as each subscriber before pushing it. A change set without
-- `open` (older servers) is re-read whole.
CREATE FUNCTION mjolnir.change_set(commit_version bigint, keys text[], vals jsonb[],
                                   changed bool[], spaces text[], open_spaces text[])
RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN (SELECT '{"version":"' || commit_version || '","changes":['
                   || coalesce(string_agg('{"key":' || c.key || ',"version":"' || commit_version
                                          || '","value":' || coalesce(c.val::text, 'null') || '}',
                                          ',' ORDER BY c.n), '')
                   || '],"open":['
                   || coalesce(string_agg(c.n::text, ',' ORDER BY c.n)
                                   FILTER (WHERE c.space = ANY (open_spaces)), '')
                   || ']}'
              FROM (SELECT k.key, k.val, k.space, row_number() OVER (ORDER BY k.ord) AS n
                      FROM unnest(keys, vals, changed, spaces) WITH ORDINALITY AS k(key, val, chg, space, ord)
                     WHERE k.chg) AS c);
END
$$;

DROP FUNCTION mjolnir.change_set(bigint, text[], jsonb[]);
DROP FUNCTION mjolnir.commit_batch(int[], bool[], text[], text[], int[], int[], int[], int[],
                                   text[], text[], bigint[], text[], text[], text[], jsonb[],
                                   text[], int[], int[], int[]);

-- As in 0005, with these differences:
--   * app_schema, first: the schema of the app's tables, for mjolnir.open_spaces;
--   * a transaction id is looked up and recorded with its user;
--   * a read is stale unless its key's value is unchanged since the version read
--     (changed <= read <= version);
--   * every write statement returns, besides the new value, whether it changed anything
--     (`changed`); a kv statement that returns no row changed nothing (a put of the value
--     already there, the delete of an absent entry). Unchanged writes move the key's
--     `version` but not its `changed`, and are left out of the change set; changed_writes
--     reports, per write of a committed transaction, which changed something.
CREATE FUNCTION mjolnir.commit_batch(
    app_schema text,
    lock_hashes int[], lock_exclusive bool[],
    txn_ids text[], users text[], read_ends int[], write_ends int[],
    read_owners int[], write_owners int[],
    read_spaces text[], read_pks text[], read_versions bigint[],
    write_spaces text[], write_pks text[], write_keys text[],
    write_args jsonb[], statements text[], write_sqls int[], write_sets int[], write_checks int[],
    OUT outcome text, OUT at_version bigint, OUT stale_reads int[], OUT new_values jsonb,
    OUT changed_writes bool[],
    OUT err_code text, OUT err_message text, OUT err_write int, OUT set_based bool
) RETURNS SETOF record
LANGUAGE plpgsql AS $$
DECLARE
    n int := coalesce(array_length(txn_ids, 1), 0);
    nw int := coalesce(array_length(write_pks, 1), 0);
    outcomes text[] := array_fill(NULL::text, ARRAY[n]);
    versions bigint[] := array_fill(NULL::bigint, ARRAY[n]);
    stales jsonb[] := array_fill(NULL::jsonb, ARRAY[n]);
    codes text[] := array_fill(NULL::text, ARRAY[n]);
    messages text[] := array_fill(NULL::text, ARRAY[n]);
    failed int[] := array_fill(NULL::int, ARRAY[n]);
    vals jsonb[] := array_fill(NULL::jsonb, ARRAY[greatest(nw, 1)]);
    chg bool[] := array_fill(false, ARRAY[greatest(nw, 1)]);
    fast bool := n > 1;
    deferred text;
    r_lo int;
    w_lo int;
    w int;
    v bigint;
    st int[];
    matched int;
    wanted int;
    found_row bool;
    val jsonb;
    val_changed bool;
    one jsonb[];
    one_changed bool[];
    open_now text[];
    g record;
    res record;
    prepared_as text[];
BEGIN
    SELECT array_agg(CASE WHEN q.k = ANY (write_sets)
                          THEN mjolnir.prepared(q.query, 'jsonb[], text[], int[]')
                          WHEN q.k = ANY (write_sqls)
                          THEN mjolnir.prepared(q.query, 'jsonb, text') END ORDER BY q.k)
      INTO prepared_as
      FROM unnest(statements) WITH ORDINALITY AS q(query, k);
    PERFORM CASE WHEN x.exclusive THEN pg_advisory_xact_lock(1298755436, x.hash)
                 ELSE pg_advisory_xact_lock_shared(1298755436, x.hash) END
       FROM unnest(lock_hashes, lock_exclusive) AS x(hash, exclusive);
    IF n > 1 THEN
        SELECT string_agg(format('%I.%I', ns.nspname, c.conname), ', ')
          INTO deferred
          FROM pg_constraint c JOIN pg_namespace ns ON ns.oid = c.connamespace
         WHERE c.condeferred;
    END IF;

    IF fast AND (SELECT count(DISTINCT (x.u, x.t)) FROM unnest(users, txn_ids) AS x(u, t)) < n THEN
        fast := false;
    END IF;
    IF deferred IS NOT NULL THEN
        fast := false;
    END IF;
    IF fast THEN
        SELECT array_agg((SELECT t.version FROM mjolnir.txns t
                           WHERE t.app_user = users[k.i] AND t.txn = k.txn) ORDER BY k.i)
          INTO versions
          FROM unnest(txn_ids) WITH ORDINALITY AS k(txn, i);
        -- A read is stale if its key's value changed since the version read, or if an
        -- earlier transaction of the batch writes the key (whether or not that write will
        -- change anything: a false conflict, which is allowed).
        WITH w AS MATERIALIZED (
            SELECT write_spaces[j] AS space, write_pks[j] AS pk, min(write_owners[j]) AS first
              FROM generate_series(1, nw) AS j
             WHERE versions[write_owners[j]] IS NULL
             GROUP BY 1, 2),
        r AS MATERIALIZED (
            SELECT read_owners[k] AS i,
                   jsonb_agg(k - coalesce(read_ends[read_owners[k] - 1], 0) ORDER BY k) AS stale
              FROM generate_series(1, coalesce(array_length(read_pks, 1), 0)) AS k
              LEFT JOIN w ON w.space = read_spaces[k] AND w.pk = read_pks[k]
             WHERE NOT coalesce((SELECT ver.changed <= read_versions[k] AND read_versions[k] <= ver.version
                                   FROM mjolnir.versions ver
                                  WHERE ver.space = read_spaces[k] AND ver.pk = read_pks[k]),
                                read_versions[k] = 0)
                OR coalesce(w.first < read_owners[k], false)
             GROUP BY 1)
        SELECT array_agg(r.stale ORDER BY t.i),
               array_agg(CASE WHEN versions[t.i] IS NOT NULL THEN 'duplicate'
                              WHEN r.stale IS NOT NULL THEN 'conflict'
                              WHEN write_ends[t.i] = coalesce(write_ends[t.i - 1], 0) THEN 'committed'
                              ELSE 'pending' END ORDER BY t.i)
          INTO stales, outcomes
          FROM generate_series(1, n) AS t(i) LEFT JOIN r ON r.i = t.i;
        IF EXISTS (SELECT 1 FROM generate_series(1, nw) AS j
                    WHERE outcomes[write_owners[j]] = 'pending'
                    GROUP BY write_spaces[j], write_pks[j] HAVING count(*) > 1)
           OR EXISTS (SELECT 1 FROM unnest(write_sets) AS q WHERE q IS NULL) THEN
            fast := false;
        END IF;
    END IF;
    IF fast AND 'pending' = ANY (outcomes) THEN
        BEGIN
            FOR i IN 1 .. n LOOP
                IF outcomes[i] = 'pending' THEN
                    versions[i] := nextval('mjolnir.commit_version');
                END IF;
            END LOOP;
            FOR g IN
                SELECT users[write_owners[j]] AS app_user, write_sets[j] AS query,
                       array_agg(j ORDER BY j) AS js,
                       count(*) FILTER (WHERE write_checks[j] IS NOT NULL) AS needs_match
                  FROM generate_series(1, nw) AS j
                 WHERE outcomes[write_owners[j]] = 'pending'
                 GROUP BY 1, 2
            LOOP
                PERFORM set_config('role', 'mjolnir_app', true),
                        set_config('mjolnir.user', g.app_user, true);
                matched := 0;
                FOR res IN EXECUTE format('EXECUTE %I(%L, %L, %L)',
                                          prepared_as[g.query],
                                          write_args, write_pks, g.js) LOOP
                    vals[res.ord] := res.value;
                    chg[res.ord] := res.changed;
                    matched := matched + 1;
                END LOOP;
                IF g.needs_match > 0 AND matched < array_length(g.js, 1) THEN
                    RAISE EXCEPTION 'a write matched no row' USING ERRCODE = 'MJ404';
                END IF;
            END LOOP;
            RESET ROLE;
            SELECT count(*) INTO wanted FROM unnest(outcomes) AS o WHERE o = 'pending';
            INSERT INTO mjolnir.txns (app_user, txn, version)
                SELECT users[i], txn_ids[i], versions[i] FROM generate_series(1, n) AS i
                 WHERE outcomes[i] = 'pending'
                ON CONFLICT (app_user, txn) DO NOTHING;
            GET DIAGNOSTICS matched = ROW_COUNT;
            IF matched < wanted THEN
                RAISE EXCEPTION 'a transaction of the batch already committed' USING ERRCODE = 'MJ001';
            END IF;
            INSERT INTO mjolnir.versions AS ver (space, pk, version, changed)
                SELECT write_spaces[j], write_pks[j], versions[write_owners[j]],
                       CASE WHEN chg[j] THEN versions[write_owners[j]] ELSE 0 END
                  FROM generate_series(1, nw) AS j
                 WHERE outcomes[write_owners[j]] = 'pending'
                ON CONFLICT (space, pk) DO UPDATE
                   SET version = EXCLUDED.version, changed = greatest(ver.changed, EXCLUDED.changed);
            -- After the writes, which hold their tables' locks until the commit: a change
            -- of row-level security waits for them, or they for it.
            open_now := mjolnir.open_spaces(app_schema, write_spaces);
            PERFORM mjolnir.announce(
                        array_agg(versions[t.i] ORDER BY t.i),
                        array_agg(mjolnir.change_set(versions[t.i], write_keys[t.lo:t.hi], vals[t.lo:t.hi],
                                                     chg[t.lo:t.hi], write_spaces[t.lo:t.hi], open_now)
                                  ORDER BY t.i))
               FROM (SELECT i, coalesce(write_ends[i - 1], 0) + 1 AS lo, write_ends[i] AS hi
                       FROM generate_series(1, n) AS i
                      WHERE outcomes[i] = 'pending') AS t;
            FOR i IN 1 .. n LOOP
                IF outcomes[i] = 'pending' THEN
                    outcomes[i] := 'committed';
                END IF;
            END LOOP;
        EXCEPTION WHEN OTHERS THEN
            RAISE DEBUG 'mjolnir.commit_batch: set-based path undone: % %', SQLSTATE, SQLERRM;
            fast := false;
        END;
    END IF;

    IF NOT fast THEN
        vals := array_fill(NULL::jsonb, ARRAY[greatest(nw, 1)]);
        chg := array_fill(false, ARRAY[greatest(nw, 1)]);
        r_lo := 1; w_lo := 1;
        FOR i IN 1 .. n LOOP
            outcomes[i] := NULL; versions[i] := NULL; stales[i] := NULL;
            SELECT t.version INTO v FROM mjolnir.txns t
             WHERE t.app_user = users[i] AND t.txn = txn_ids[i];
            IF v IS NOT NULL THEN
                outcomes[i] := 'duplicate'; versions[i] := v;
            ELSE
                SELECT array_agg(k.ord::int ORDER BY k.ord)
                  INTO st
                  FROM unnest(read_spaces[r_lo:read_ends[i]], read_pks[r_lo:read_ends[i]],
                              read_versions[r_lo:read_ends[i]])
                       WITH ORDINALITY AS k(space, pk, read, ord)
                 WHERE NOT coalesce((SELECT ver.changed <= k.read AND k.read <= ver.version
                                       FROM mjolnir.versions ver
                                      WHERE ver.space = k.space AND ver.pk = k.pk),
                                    k.read = 0);
                IF st IS NOT NULL THEN
                    outcomes[i] := 'conflict'; stales[i] := to_jsonb(st);
                ELSIF write_ends[i] < w_lo THEN
                    outcomes[i] := 'committed';
                ELSE
                    BEGIN
                        versions[i] := nextval('mjolnir.commit_version');
                        PERFORM set_config('role', 'mjolnir_app', true),
                                set_config('mjolnir.user', users[i], true);
                        one := '{}';
                        one_changed := '{}';
                        FOR j IN w_lo .. write_ends[i] LOOP
                            w := j;
                            val := NULL;
                            val_changed := NULL;
                            EXECUTE format('EXECUTE %I(%L, %L)', prepared_as[write_sqls[j]],
                                           write_args[j], write_pks[j]) INTO val, val_changed;
                            GET DIAGNOSTICS matched = ROW_COUNT;
                            IF matched = 0 AND write_checks[j] IS NOT NULL THEN
                                RESET ROLE;
                                EXECUTE statements[write_checks[j]] INTO found_row
                                    USING write_args[j], write_pks[j];
                                IF found_row THEN
                                    RAISE EXCEPTION 'the policies hide this row from the user'
                                        USING ERRCODE = 'MJ403';
                                ELSE
                                    RAISE EXCEPTION 'no such row' USING ERRCODE = 'MJ404';
                                END IF;
                            END IF;
                            one := one || val;
                            one_changed := one_changed || coalesce(val_changed, false);
                        END LOOP;
                        w := NULL;
                        RESET ROLE;
                        INSERT INTO mjolnir.txns (app_user, txn, version)
                            VALUES (users[i], txn_ids[i], versions[i])
                            ON CONFLICT (app_user, txn) DO NOTHING;
                        IF NOT FOUND THEN
                            RAISE EXCEPTION 'transaction % already committed', txn_ids[i]
                                USING ERRCODE = 'MJ001';
                        END IF;
                        INSERT INTO mjolnir.versions AS ver (space, pk, version, changed)
                            SELECT k.s, k.p, versions[i], CASE WHEN k.c THEN versions[i] ELSE 0 END
                              FROM unnest(write_spaces[w_lo:write_ends[i]], write_pks[w_lo:write_ends[i]],
                                          one_changed) AS k(s, p, c)
                            ON CONFLICT (space, pk) DO UPDATE
                               SET version = EXCLUDED.version,
                                   changed = greatest(ver.changed, EXCLUDED.changed);
                        open_now := mjolnir.open_spaces(app_schema, write_spaces[w_lo:write_ends[i]]);
                        PERFORM mjolnir.announce(ARRAY[versions[i]], ARRAY[mjolnir.change_set(
                                    versions[i], write_keys[w_lo:write_ends[i]], one, one_changed,
                                    write_spaces[w_lo:write_ends[i]], open_now)]);
                        IF deferred IS NOT NULL THEN
                            SET CONSTRAINTS ALL IMMEDIATE;
                            EXECUTE format('SET CONSTRAINTS %s DEFERRED', deferred);
                        END IF;
                        FOR j IN w_lo .. write_ends[i] LOOP
                            vals[j] := one[j - w_lo + 1];
                            chg[j] := one_changed[j - w_lo + 1];
                        END LOOP;
                        outcomes[i] := 'committed';
                    EXCEPTION WHEN OTHERS THEN
                        GET STACKED DIAGNOSTICS err_code = RETURNED_SQLSTATE,
                                                err_message = MESSAGE_TEXT;
                        codes[i] := err_code;
                        messages[i] := err_message;
                        outcomes[i] := 'refused';
                        versions[i] := NULL;
                        failed[i] := w - w_lo + 1;
                    END;
                END IF;
            END IF;
            r_lo := read_ends[i] + 1; w_lo := write_ends[i] + 1;
        END LOOP;
    END IF;

    w_lo := 1;
    FOR i IN 1 .. n LOOP
        outcome := outcomes[i];
        at_version := versions[i];
        stale_reads := (SELECT array_agg(x::int) FROM jsonb_array_elements_text(stales[i]) AS x);
        new_values := CASE WHEN outcome = 'committed' AND at_version IS NOT NULL
                           THEN to_jsonb(vals[w_lo:write_ends[i]]) END;
        changed_writes := CASE WHEN outcome = 'committed' AND at_version IS NOT NULL
                               THEN chg[w_lo:write_ends[i]] END;
        err_code := codes[i];
        err_message := messages[i];
        err_write := failed[i];
        set_based := fast;
        RETURN NEXT;
        w_lo := write_ends[i] + 1;
    END LOOP;
END
$$;

ALTER FUNCTION mjolnir.commit_batch SET plan_cache_mode = force_generic_plan;
REVOKE EXECUTE ON FUNCTION mjolnir.commit_batch FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION mjolnir.change_set FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION mjolnir.open_spaces FROM PUBLIC;
