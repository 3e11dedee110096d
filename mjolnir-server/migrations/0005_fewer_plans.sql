-- Fewer plans per commit.
--
-- A profile of PostgreSQL under the bank benchmark (perf, one backend running
-- commit_batch) put about half of its CPU into parsing and planning rather than into the
-- work itself:
--   * the statements of commit_batch and announce were planned afresh at most calls:
--     under plan_cache_mode = auto, statements whose parameters are arrays kept getting
--     "custom" plans. Every lookup in these functions is written to be an index scan under
--     a generic plan (0004: the correlated subqueries), so they now run with generic plans
--     only;
--   * the writes the server builds ran as dynamic EXECUTEs, parsed and planned at every
--     call (about 70 us for a one-row UPDATE). Each statement text is now prepared once per
--     connection (mjolnir.prepared) and run by name, so it is planned once;
--   * change_set was an SQL function, which PostgreSQL parses and plans at every call when
--     it cannot inline it; as PL/pgSQL its statement is planned once per connection.
-- A lone two-row transfer went from about 650 to 370 us of backend CPU.

CREATE OR REPLACE FUNCTION mjolnir.change_set(commit_version bigint, keys text[], vals jsonb[])
RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN (SELECT '{"version":"' || commit_version || '","changes":['
                   || coalesce(string_agg('{"key":' || k.key || ',"version":"' || commit_version
                                          || '","value":' || coalesce(k.val::text, 'null') || '}',
                                          ',' ORDER BY k.ord), '')
                   || ']}'
              FROM unnest(keys, vals) WITH ORDINALITY AS k(key, val, ord));
END
$$;

-- The name under which `query`, with parameters of `types`, is prepared on this
-- connection; prepared by the first call. The names this connection prepared are kept in
-- the session setting mjolnir.prepared, which is cheaper to search than
-- pg_prepared_statements. A setting made in a transaction that is rolled back is undone
-- while the prepared statement may remain, so a name the setting lacks is looked up in
-- pg_prepared_statements before it is prepared. The server builds every query from
-- catalog names (quoted), so a connection prepares a bounded set of them.
CREATE FUNCTION mjolnir.prepared(query text, types text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    stmt text := 'mjolnir_' || md5(types || ':' || query);
    known text := current_setting('mjolnir.prepared', true);
BEGIN
    IF known IS NULL OR strpos(known, stmt) = 0 THEN
        IF NOT EXISTS (SELECT 1 FROM pg_prepared_statements p WHERE p.name = stmt) THEN
            EXECUTE format('PREPARE %I(%s) AS %s', stmt, types, query);
        END IF;
        PERFORM set_config('mjolnir.prepared', coalesce(known, '') || ' ' || stmt, false);
    END IF;
    RETURN stmt;
END
$$;

-- As in 0004, but each write runs as a prepared statement (above). Its arguments are
-- passed as literals, since EXECUTE of a prepared statement takes no parameters from
-- PL/pgSQL; turning them to text and back costs a fraction of planning the statement.
CREATE OR REPLACE FUNCTION mjolnir.commit_batch(
    lock_hashes int[], lock_exclusive bool[],
    txn_ids text[], users text[], read_ends int[], write_ends int[],
    read_owners int[], write_owners int[],
    read_spaces text[], read_pks text[], read_versions bigint[],
    write_spaces text[], write_pks text[], write_keys text[],
    write_args jsonb[], statements text[], write_sqls int[], write_sets int[], write_checks int[],
    OUT outcome text, OUT at_version bigint, OUT stale_reads int[], OUT new_values jsonb,
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
    one jsonb[];
    g record;
    res record;
    -- The name each statement is prepared under, for the writes (write_sqls, write_sets).
    -- Prepared here, as the function's owner, before any role switch: permissions and
    -- row-level security are checked when a statement runs, as the role it runs as.
    prepared_as text[];
BEGIN
    SELECT array_agg(CASE WHEN q.k = ANY (write_sets)
                          THEN mjolnir.prepared(q.query, 'jsonb[], text[], int[]')
                          WHEN q.k = ANY (write_sqls)
                          THEN mjolnir.prepared(q.query, 'jsonb, text') END ORDER BY q.k)
      INTO prepared_as
      FROM unnest(statements) WITH ORDINALITY AS q(query, k);
    -- unnest yields the locks in array order, which the server sorted.
    PERFORM CASE WHEN x.exclusive THEN pg_advisory_xact_lock(1298755436, x.hash)
                 ELSE pg_advisory_xact_lock_shared(1298755436, x.hash) END
       FROM unnest(lock_hashes, lock_exclusive) AS x(hash, exclusive);
    IF n > 1 THEN
        SELECT string_agg(format('%I.%I', ns.nspname, c.conname), ', ')
          INTO deferred
          FROM pg_constraint c JOIN pg_namespace ns ON ns.oid = c.connamespace
         WHERE c.condeferred;
    END IF;

    -- The fast path: decide every transaction, then apply the accepted ones together.
    IF fast AND (SELECT count(DISTINCT t) FROM unnest(txn_ids) AS t) < n THEN
        -- A txn id twice in one batch: the slow path sees the first one's record.
        fast := false;
    END IF;
    IF deferred IS NOT NULL THEN
        -- Checked once after the whole batch, a deferred constraint would let through two
        -- transactions that each break it alone but not together (one creates money, the
        -- next destroys as much): only the slow path checks each on its own.
        fast := false;
    END IF;
    IF fast THEN
        -- Lookups by key are written as subqueries, so that they stay index scans
        -- however large the tables grow: the planner cannot see how short the arrays are.
        SELECT array_agg((SELECT t.version FROM mjolnir.txns t WHERE t.txn = k.txn) ORDER BY k.i)
          INTO versions
          FROM unnest(txn_ids) WITH ORDINALITY AS k(txn, i);
        -- A read is stale if its key's version is not the one read, or if an earlier
        -- transaction of the batch writes the key. (Counting the writes of an earlier
        -- transaction that turns out to conflict too makes a false conflict, which is
        -- allowed: the client retries.)
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
             WHERE coalesce((SELECT ver.version FROM mjolnir.versions ver
                              WHERE ver.space = read_spaces[k] AND ver.pk = read_pks[k]), 0)
                   <> read_versions[k]
                OR coalesce(w.first < read_owners[k], false)
             GROUP BY 1)
        SELECT array_agg(r.stale ORDER BY t.i),
               array_agg(CASE WHEN versions[t.i] IS NOT NULL THEN 'duplicate'
                              WHEN r.stale IS NOT NULL THEN 'conflict'
                              WHEN write_ends[t.i] = coalesce(write_ends[t.i - 1], 0) THEN 'committed'
                              ELSE 'pending' END ORDER BY t.i)
          INTO stales, outcomes
          FROM generate_series(1, n) AS t(i) LEFT JOIN r ON r.i = t.i;
        -- A key written by two accepted transactions, or a write with no set form: the
        -- slow path applies them one after the other.
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
                    matched := matched + 1;
                END LOOP;
                -- An update or delete that matched no row: the slow path tells which.
                IF g.needs_match > 0 AND matched < array_length(g.js, 1) THEN
                    RAISE EXCEPTION 'a write matched no row' USING ERRCODE = 'MJ404';
                END IF;
            END LOOP;
            RESET ROLE;
            SELECT count(*) INTO wanted FROM unnest(outcomes) AS o WHERE o = 'pending';
            INSERT INTO mjolnir.txns (txn, version)
                SELECT txn_ids[i], versions[i] FROM generate_series(1, n) AS i
                 WHERE outcomes[i] = 'pending'
                ON CONFLICT (txn) DO NOTHING;
            GET DIAGNOSTICS matched = ROW_COUNT;
            IF matched < wanted THEN
                RAISE EXCEPTION 'a transaction of the batch already committed' USING ERRCODE = 'MJ001';
            END IF;
            INSERT INTO mjolnir.versions (space, pk, version)
                SELECT write_spaces[j], write_pks[j], versions[write_owners[j]]
                  FROM generate_series(1, nw) AS j
                 WHERE outcomes[write_owners[j]] = 'pending'
                ON CONFLICT (space, pk) DO UPDATE SET version = EXCLUDED.version;
            -- One change set per transaction, in batch order, which is version order.
            PERFORM mjolnir.announce(
                        array_agg(versions[t.i] ORDER BY t.i),
                        array_agg(mjolnir.change_set(versions[t.i], write_keys[t.lo:t.hi], vals[t.lo:t.hi])
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
            -- Undone: decide the whole batch again, one transaction at a time.
            RAISE DEBUG 'mjolnir.commit_batch: set-based path undone: % %', SQLSTATE, SQLERRM;
            fast := false;
        END;
    END IF;

    -- The slow path: one transaction at a time, in batch order.
    IF NOT fast THEN
        vals := array_fill(NULL::jsonb, ARRAY[greatest(nw, 1)]);
        r_lo := 1; w_lo := 1;
        FOR i IN 1 .. n LOOP
            outcomes[i] := NULL; versions[i] := NULL; stales[i] := NULL;
            SELECT t.version INTO v FROM mjolnir.txns t WHERE t.txn = txn_ids[i];
            IF v IS NOT NULL THEN
                outcomes[i] := 'duplicate'; versions[i] := v;
            ELSE
                SELECT array_agg(k.ord::int ORDER BY k.ord)
                  INTO st
                  FROM unnest(read_spaces[r_lo:read_ends[i]], read_pks[r_lo:read_ends[i]],
                              read_versions[r_lo:read_ends[i]])
                       WITH ORDINALITY AS k(space, pk, read, ord)
                 WHERE coalesce((SELECT ver.version FROM mjolnir.versions ver
                                  WHERE ver.space = k.space AND ver.pk = k.pk), 0) <> k.read;
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
                        FOR j IN w_lo .. write_ends[i] LOOP
                            w := j;
                            val := NULL;
                            EXECUTE format('EXECUTE %I(%L, %L)', prepared_as[write_sqls[j]],
                                           write_args[j], write_pks[j]) INTO val;
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
                        END LOOP;
                        w := NULL;
                        RESET ROLE;
                        -- A re-send of this transaction committed meanwhile through
                        -- another connection, with no key in common (else the locks
                        -- would have kept it out): its record decides.
                        INSERT INTO mjolnir.txns (txn, version) VALUES (txn_ids[i], versions[i])
                            ON CONFLICT (txn) DO NOTHING;
                        IF NOT FOUND THEN
                            RAISE EXCEPTION 'transaction % already committed', txn_ids[i]
                                USING ERRCODE = 'MJ001';
                        END IF;
                        INSERT INTO mjolnir.versions (space, pk, version)
                            SELECT k.s, k.p, versions[i]
                              FROM unnest(write_spaces[w_lo:write_ends[i]], write_pks[w_lo:write_ends[i]]) AS k(s, p)
                            ON CONFLICT (space, pk) DO UPDATE SET version = EXCLUDED.version;
                        PERFORM mjolnir.announce(ARRAY[versions[i]], ARRAY[mjolnir.change_set(
                                    versions[i], write_keys[w_lo:write_ends[i]], one)]);
                        IF deferred IS NOT NULL THEN
                            SET CONSTRAINTS ALL IMMEDIATE;
                            EXECUTE format('SET CONSTRAINTS %s DEFERRED', deferred);
                        END IF;
                        FOR j IN w_lo .. write_ends[i] LOOP
                            vals[j] := one[j - w_lo + 1];
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
ALTER FUNCTION mjolnir.announce SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION mjolnir.read_as SET plan_cache_mode = force_generic_plan;

REVOKE EXECUTE ON FUNCTION mjolnir.prepared FROM PUBLIC;
