-- One round trip per commit and per read (docs/architecture.md, "A commit, step by step").
--
-- Until 0003 the server drove a commit statement by statement: BEGIN, begin_commit (or
-- begin_batch), the role, each write, finish_commit, the deferred constraints, savepoints,
-- COMMIT; about seven round trips per client transaction, and five per read. Both now run
-- as one statement outside any explicit transaction: PostgreSQL commits it as soon as it
-- returns, so the statement's end is the commit point.
--
-- The server still builds every statement that touches an app table, from names the
-- catalog read from PostgreSQL (quoted), with every value a parameter: $1 a jsonb (the row
-- or the changed columns), $2 the primary key as text. These functions run them.

-- Announces committed transactions' change sets to every instance, in the order given
-- (which must be version order). NOTIFY payloads are limited to 8000 bytes; larger change
-- sets go through the log.
CREATE FUNCTION mjolnir.announce(versions bigint[], change_sets text[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO mjolnir.commit_log (version, changes)
        SELECT x.v, x.c::jsonb FROM unnest(versions, change_sets) AS x(v, c)
         WHERE octet_length(x.c) >= 7900;
    -- unnest yields the rows in array order, and so the notifications.
    PERFORM pg_notify('mjolnir_commits',
                      CASE WHEN octet_length(x.c) < 7900 THEN x.c
                           ELSE json_build_object('version', x.v::text, 'logged', true)::text END)
       FROM unnest(versions, change_sets) AS x(v, c);
END
$$;

-- The change set of one transaction as the feed carries it (protocol: a version and its
-- entries), from the keys as the protocol spells them (JSON text the server wrote) and the
-- new values. Spelled by concatenating text, which costs a fraction of building jsonb.
CREATE FUNCTION mjolnir.change_set(commit_version bigint, keys text[], vals jsonb[])
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT '{"version":"' || commit_version || '","changes":['
           || coalesce(string_agg('{"key":' || k.key || ',"version":"' || commit_version
                                  || '","value":' || coalesce(k.val::text, 'null') || '}',
                                  ',' ORDER BY k.ord), '')
           || ']}'
      FROM unnest(keys, vals) WITH ORDINALITY AS k(key, val, ord)
$$;

-- Commits a batch of client transactions, in order, as one PostgreSQL transaction.
--
-- The batch is described by parallel arrays:
--   per transaction i:  txn_ids[i], users[i] ('' for none), and the ends of its slices of
--                       the read and write arrays: its reads are
--                       read_ends[i-1]+1 .. read_ends[i] (read_ends[0] being 0), and
--                       likewise its writes; read_owners and write_owners say the same
--                       the other way round: which transaction each read and write is of;
--   per read:           read_spaces, read_pks, read_versions (the version the client read);
--   per write:          write_spaces, write_pks, write_keys (the key as the protocol spells
--                       it, JSON), write_args (a jsonb: the row, the changed columns or the
--                       kv value), and three statements the server built, each given as
--                       its index in `statements` (each text once, however many writes
--                       share it):
--                       write_sqls:   the write alone, over $1 (its arg) and $2 (its primary
--                                     key as text), returning the new value as jsonb (NULL
--                                     for a delete);
--                       write_sets:   the same write for many keys at once, over $1 (all
--                                     args), $2 (all primary keys) and $3 (which of them),
--                                     returning (index, new value); NULL if there is none;
--                       write_checks: for an update or delete of a row, whether the row
--                                     exists past the app's policies, run only if the write
--                                     matched no row (so "not found" and "forbidden" can be
--                                     told apart); NULL otherwise.
--
-- First the union of the batch's key locks is taken in one ascending sweep (exclusive if
-- any transaction writes the key), so two batches never wait for each other in a cycle.
-- Then each transaction is decided, under those locks, as if alone and in batch order:
--   duplicate:  its txn id already committed;
--   conflict:   a read is stale (its version is not the one read, counting the writes of
--               the batch's earlier transactions); stale_reads lists which (1-based, within
--               the transaction);
--   committed:  its writes ran as mjolnir_app with mjolnir.user set, so the app's row-level
--               security, CHECKs and triggers apply; its versions, txn id and change set
--               were recorded; new_values holds each write's new value (null for a delete).
--               A read-only transaction whose reads are current commits without a version
--               of its own (at_version is NULL);
--   refused:    a write raised an error (err_code, err_message, err_write: which write,
--               1-based); everything the transaction did is undone, and the server decides
--               what the error means.
-- set_based tells which path decided the batch (for the metrics and the tests).
--
-- The fast path, for a batch of several transactions that write each key at most once,
-- in a database without deferred constraints, and whose writes all have a set form (the
-- server gives none for tables with triggers of the app's own, whose effects could depend
-- on the order of the rows): decide every transaction first (a read of a key an earlier
-- transaction of the batch writes is stale), then apply all accepted writes with one
-- statement per (user, table, kind of write), and record all versions and txn ids with
-- one statement each. Any error undoes the whole fast path (an exception block), and the
-- batch is decided again by the slow path: one transaction at a time, each in its own
-- exception block, with its deferred constraints checked at its end, so that one
-- transaction's error refuses that transaction alone. A lone transaction goes straight to
-- the slow path.
--
-- Immediate constraints check a set-based statement as a whole. A batch that passes them
-- is therefore one whose writes are valid together; a transaction may then commit that,
-- checked alone in batch order, would have been refused (it inserts a unique value that a
-- later transaction of the batch frees): its outcome is that of the serial order with the
-- later transaction first, and no read saw the difference, since reads are validated.
CREATE FUNCTION mjolnir.commit_batch(
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
BEGIN
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
                FOR res IN EXECUTE statements[g.query] USING write_args, write_pks, g.js LOOP
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
                            EXECUTE statements[write_sqls[j]] INTO val USING write_args[j], write_pks[j];
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

-- Reads keys as `app_user` sees them, in one snapshot: a STABLE function runs its
-- statements in the snapshot of the statement that called it. `query` is built by the
-- server (one SELECT per table, UNION ALL) over $1 (primary keys) and $2 (spaces), and
-- returns (ord, version, value) rows.
CREATE FUNCTION mjolnir.read_as(app_user text, query text, pks text[], spaces text[])
RETURNS TABLE (ord int, version bigint, value jsonb)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    PERFORM set_config('role', 'mjolnir_app', true), set_config('mjolnir.user', app_user, true);
    RETURN QUERY EXECUTE query USING pks, spaces;
    PERFORM set_config('role', 'none', true);
END
$$;

-- Both run arbitrary statements the server built: only the server's own role may call them.
REVOKE EXECUTE ON FUNCTION mjolnir.commit_batch FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION mjolnir.announce FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION mjolnir.read_as FROM PUBLIC;

-- Replaced by commit_batch.
DROP FUNCTION mjolnir.finish_commit(bigint, text[], text[], text, text);
DROP FUNCTION mjolnir.begin_commit(text, int[], bool[], text[], text[], bool);
DROP FUNCTION mjolnir.begin_batch(int[], bool[], text[], text[], text[], int);
