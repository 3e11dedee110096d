-- A batch whose queries read no table that the batch writes keeps the set-based path of
-- group commit (0003): its queries give the same result before the batch as after any of
-- its transactions, so the fast path checks them with the reads, before applying any
-- write. A batch that writes a table its queries read (the server locks it in SHARE ROW
-- EXCLUSIVE mode, 0008) still goes one transaction at a time, each query run after the
-- transactions before it are applied. With 32 clients, transfers between accounts that
-- each read a query of items took the one-at-a-time path at 0.41 times the rate of the
-- same transfers without the query (docs/benchmarks.md, "Commits that read a query").
--
-- The same signature as 0008's overload, which this replaces: what it takes and returns
-- is unchanged, so a server of either version may call it.

CREATE OR REPLACE FUNCTION mjolnir.commit_batch(
    app_schema text,
    lock_hashes int[], lock_exclusive bool[],
    txn_ids text[], users text[], read_ends int[], write_ends int[],
    read_owners int[], write_owners int[],
    read_spaces text[], read_pks text[], read_versions bigint[],
    read_afters text[], read_values jsonb[], read_sqls int[],
    write_spaces text[], write_pks text[], write_keys text[],
    write_args jsonb[], statements text[], write_sqls int[], write_sets int[], write_checks int[],
    query_owners int[], query_sqls int[], query_args jsonb[], query_seen jsonb[],
    lock_tables text[], lock_modes text[],
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
    has_deps bool;
    val jsonb;
    val_changed bool;
    one jsonb[];
    one_changed bool[];
    open_now text[];
    g record;
    res record;
    prepared_as text[];
    any_deps bool := EXISTS (SELECT 1 FROM unnest(read_afters) AS a WHERE a IS NOT NULL);
    dst int[];
    dv bigint;
    nq int := coalesce(array_length(query_owners, 1), 0);
    qi int;
    qo int;
    qn int[];
BEGIN
    PERFORM CASE WHEN x.exclusive THEN pg_advisory_xact_lock(1298755436, x.hash)
                 ELSE pg_advisory_xact_lock_shared(1298755436, x.hash) END
       FROM unnest(lock_hashes, lock_exclusive) AS x(hash, exclusive);
    -- Table locks, after the key locks, in the server's order (by name): SHARE on the
    -- tables the batch's queries read, which keeps their writers out until the commit,
    -- ROW EXCLUSIVE on those it writes, taken up front so that no writer waits for a
    -- table while holding another.
    FOR k IN 1 .. coalesce(array_length(lock_tables, 1), 0) LOOP
        EXECUTE format('LOCK TABLE %s IN %s MODE', lock_tables[k], lock_modes[k]);
    END LOOP;
    -- Only now the statements are prepared: preparing a write takes its table's ROW
    -- EXCLUSIVE lock until the end of the transaction, and taken before the key locks it
    -- could close a cycle with a commit that holds a key and waits for SHARE on the table.
    SELECT array_agg(CASE WHEN q.k = ANY (write_sets)
                          THEN mjolnir.prepared(q.query, 'jsonb[], text[], int[]')
                          WHEN q.k = ANY (write_sqls) OR q.k = ANY (read_sqls)
                          THEN mjolnir.prepared(q.query, 'jsonb, text')
                          WHEN q.k = ANY (query_sqls)
                          THEN mjolnir.prepared(q.query, 'jsonb') END ORDER BY q.k)
      INTO prepared_as
      FROM unnest(statements) WITH ORDINALITY AS q(query, k);
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
    -- A dependency's value is read as its user, and one on an earlier transaction of the
    -- batch can only be checked once that one is applied: one at a time.
    IF any_deps THEN
        fast := false;
    END IF;
    -- A query is run again as its user, after the transactions before it in the batch
    -- are applied: one at a time, if the batch writes a table its queries read (the
    -- server locks such a table in SHARE ROW EXCLUSIVE mode). Otherwise every query gives
    -- the same result before the batch as after any of its transactions, and the fast
    -- path checks them all before applying any.
    IF nq > 0 AND 'SHARE ROW EXCLUSIVE' = ANY (lock_modes) THEN
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
        -- The query reads, as each query's user, numbered after the reads of their
        -- transaction as in the one-at-a-time path. The table locks keep every writer of
        -- their tables out until the commit.
        qn := array_fill(0, ARRAY[n]);
        FOR q IN 1 .. nq LOOP
            qo := query_owners[q];
            qn[qo] := qn[qo] + 1;
            CONTINUE WHEN outcomes[qo] = 'duplicate';
            BEGIN
                PERFORM set_config('role', 'mjolnir_app', true),
                        set_config('mjolnir.user', users[qo], true);
                val := NULL;
                EXECUTE format('EXECUTE %I(%L)', prepared_as[query_sqls[q]], query_args[q])
                   INTO val;
                RESET ROLE;
                val_changed := val IS DISTINCT FROM query_seen[q];
            EXCEPTION WHEN OTHERS THEN
                -- The user may no longer run it (a privilege revoked): it cannot give
                -- what the user saw. The conflict's reply says more.
                val_changed := true;
            END;
            IF val_changed THEN
                stales[qo] := coalesce(stales[qo], '[]'::jsonb)
                              || to_jsonb(read_ends[qo] - coalesce(read_ends[qo - 1], 0) + qn[qo]);
                outcomes[qo] := 'conflict';
            END IF;
        END LOOP;
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
                              read_versions[r_lo:read_ends[i]], read_afters[r_lo:read_ends[i]])
                       WITH ORDINALITY AS k(space, pk, read, after, ord)
                 WHERE k.after IS NULL
                   AND NOT coalesce((SELECT ver.changed <= k.read AND k.read <= ver.version
                                       FROM mjolnir.versions ver
                                      WHERE ver.space = k.space AND ver.pk = k.pk),
                                    k.read = 0);
                dv := NULL;
                IF any_deps THEN
                    -- A dependency on `after` holds if `after` committed, as this user, at
                    -- dv, and the key's value has not changed since: the currency rule
                    -- with dv as the version read.
                    SELECT array_agg(d.ord ORDER BY d.ord) FILTER (WHERE NOT d.current),
                           max(d.at), count(*) > 0
                      INTO dst, dv, has_deps
                      FROM (SELECT e.ord, e.at,
                                   coalesce((SELECT ver.changed <= e.at AND e.at <= ver.version
                                               FROM mjolnir.versions ver
                                              WHERE ver.space = e.space AND ver.pk = e.pk),
                                            false) AS current
                              FROM (SELECT k.ord::int AS ord, k.space, k.pk,
                                           (SELECT t.version FROM mjolnir.txns t
                                             WHERE t.app_user = users[i] AND t.txn = k.after) AS at
                                      FROM unnest(read_spaces[r_lo:read_ends[i]],
                                                  read_pks[r_lo:read_ends[i]],
                                                  read_afters[r_lo:read_ends[i]])
                                           WITH ORDINALITY AS k(space, pk, after, ord)
                                     WHERE k.after IS NOT NULL) AS e) AS d;
                    IF has_deps THEN
                        -- ... and the key holds the value read, as this user reads it.
                        BEGIN
                            PERFORM set_config('role', 'mjolnir_app', true),
                                    set_config('mjolnir.user', users[i], true);
                            FOR kr IN r_lo .. read_ends[i] LOOP
                                CONTINUE WHEN read_afters[kr] IS NULL
                                           OR kr - r_lo + 1 = ANY (coalesce(dst, '{}'));
                                val := NULL;
                                EXECUTE format('EXECUTE %I(NULL, %L)', prepared_as[read_sqls[kr]],
                                               read_pks[kr]) INTO val;
                                IF coalesce(val, 'null') IS DISTINCT FROM coalesce(read_values[kr], 'null') THEN
                                    dst := coalesce(dst, '{}') || (kr - r_lo + 1);
                                END IF;
                            END LOOP;
                            RESET ROLE;
                        EXCEPTION WHEN OTHERS THEN
                            -- The user may not read the key (a privilege revoked): it
                            -- cannot hold what the user read. Its conflict says more.
                            SELECT array_agg(k.ord::int ORDER BY k.ord) INTO dst
                              FROM unnest(read_afters[r_lo:read_ends[i]]) WITH ORDINALITY AS k(after, ord)
                             WHERE k.after IS NOT NULL;
                        END;
                        IF dst IS NOT NULL THEN
                            st := (SELECT array_agg(x ORDER BY x) FROM unnest(st || dst) AS x);
                        END IF;
                    END IF;
                END IF;
                -- A query read is stale unless the query, run again as the user, gives
                -- the result the transaction saw. Its position follows the reads'.
                qi := read_ends[i] - r_lo + 1;
                FOR q IN 1 .. nq LOOP
                    CONTINUE WHEN query_owners[q] <> i;
                    qi := qi + 1;
                    BEGIN
                        PERFORM set_config('role', 'mjolnir_app', true),
                                set_config('mjolnir.user', users[i], true);
                        val := NULL;
                        EXECUTE format('EXECUTE %I(%L)', prepared_as[query_sqls[q]], query_args[q])
                           INTO val;
                        RESET ROLE;
                        IF val IS DISTINCT FROM query_seen[q] THEN
                            st := coalesce(st, '{}') || qi;
                        END IF;
                    EXCEPTION WHEN OTHERS THEN
                        -- The user may no longer run it (a privilege revoked): it cannot
                        -- give what the user saw. The conflict's reply says more.
                        st := coalesce(st, '{}') || qi;
                    END;
                END LOOP;
                IF st IS NOT NULL THEN
                    outcomes[i] := 'conflict'; stales[i] := to_jsonb(st);
                ELSIF write_ends[i] < w_lo THEN
                    -- Read-only: no version of its own, but the newest it depends on.
                    outcomes[i] := 'committed'; versions[i] := dv;
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


ALTER FUNCTION mjolnir.commit_batch(text, int[], bool[], text[], text[], int[], int[], int[], int[],
                                    text[], text[], bigint[], text[], jsonb[], int[],
                                    text[], text[], text[], jsonb[], text[], int[], int[], int[],
                                    int[], int[], jsonb[], jsonb[], text[], text[])
    SET plan_cache_mode = force_generic_plan;
REVOKE EXECUTE ON FUNCTION mjolnir.commit_batch(text, int[], bool[], text[], text[], int[], int[], int[], int[],
                                    text[], text[], bigint[], text[], jsonb[], int[],
                                    text[], text[], text[], jsonb[], text[], int[], int[], int[],
                                    int[], int[], jsonb[], jsonb[], text[], text[])
    FROM PUBLIC;
