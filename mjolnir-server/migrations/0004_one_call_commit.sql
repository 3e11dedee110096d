-- One round trip per commit and per read (docs/architecture.md, "The commit path").
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

-- Commits a batch of client transactions, in order, as one PostgreSQL transaction.
--
-- The batch is described by parallel arrays:
--   per transaction i:  txn_ids[i], users[i] ('' for none), and the ends of its slices of
--                       the read and write arrays: its reads are
--                       read_ends[i-1]+1 .. read_ends[i] (read_ends[0] being 0), and
--                       likewise its writes;
--   per read:           read_spaces, read_pks, read_versions (the version the client read);
--   per write:          write_spaces, write_pks, write_keys (the key as the protocol spells
--                       it, JSON), write_sqls (the statement, returning the new row as
--                       jsonb, or NULL for a delete), write_args ($1), and write_checks: for
--                       an update or delete of a row, a statement telling whether the row
--                       exists past the app's policies, run only if the write matched no
--                       row (so that "not found" and "forbidden" can be told apart).
--
-- First the union of the batch's key locks is taken in one ascending sweep (exclusive if
-- any transaction writes the key), so two batches never wait for each other in a cycle.
-- Then each transaction in turn, under those locks:
--   duplicate:  its txn id already committed (earlier, or earlier in this batch);
--   conflict:   a read is stale; stale_reads lists which (1-based, within the transaction);
--   committed:  its writes ran as mjolnir_app with mjolnir.user set, so the app's
--               row-level security, CHECKs and triggers apply; then finish_commit recorded
--               the versions and the txn id and queued the NOTIFY. new_values holds each
--               write's new value (null for a delete). A read-only transaction whose reads
--               are current commits without a version of its own (at_version is NULL);
--   refused:    a write raised an error (err_code, err_message, err_write: which write,
--               1-based); everything the transaction did is undone by its exception block,
--               and the server decides what the error means.
-- Later transactions validate against the versions earlier ones wrote, because those are
-- in mjolnir.versions by then. With more than one transaction, deferred constraints are
-- checked at the end of each (and deferred again), so one transaction's violation does not
-- fail the whole batch at COMMIT.
CREATE FUNCTION mjolnir.commit_batch(
    lock_hashes int[], lock_exclusive bool[],
    txn_ids text[], users text[], read_ends int[], write_ends int[],
    read_spaces text[], read_pks text[], read_versions bigint[],
    write_spaces text[], write_pks text[], write_keys text[],
    write_sqls text[], write_args jsonb[], write_checks text[],
    OUT outcome text, OUT at_version bigint, OUT stale_reads int[], OUT new_values jsonb,
    OUT err_code text, OUT err_message text, OUT err_write int
) RETURNS SETOF record
LANGUAGE plpgsql AS $$
DECLARE
    n int := coalesce(array_length(txn_ids, 1), 0);
    deferred text;
    r_lo int := 1;
    w_lo int := 1;
    r_hi int;
    w_hi int;
    w int;
    matched int;
    found_row bool;
    val jsonb;
    vals jsonb[];
    payload text;
BEGIN
    FOR i IN 1 .. coalesce(array_length(lock_hashes, 1), 0) LOOP
        IF lock_exclusive[i] THEN
            PERFORM pg_advisory_xact_lock(1298755436, lock_hashes[i]);
        ELSE
            PERFORM pg_advisory_xact_lock_shared(1298755436, lock_hashes[i]);
        END IF;
    END LOOP;
    IF n > 1 THEN
        SELECT string_agg(format('%I.%I', ns.nspname, c.conname), ', ')
          INTO deferred
          FROM pg_constraint c JOIN pg_namespace ns ON ns.oid = c.connamespace
         WHERE c.condeferred;
    END IF;

    FOR i IN 1 .. n LOOP
        r_hi := read_ends[i];
        w_hi := write_ends[i];
        outcome := NULL; at_version := NULL; stale_reads := NULL; new_values := NULL;
        err_code := NULL; err_message := NULL; err_write := NULL;

        SELECT t.version INTO at_version FROM mjolnir.txns t WHERE t.txn = txn_ids[i];
        IF at_version IS NOT NULL THEN
            outcome := 'duplicate';
        ELSE
            SELECT array_agg(k.ord::int ORDER BY k.ord)
              INTO stale_reads
              FROM unnest(read_spaces[r_lo:r_hi], read_pks[r_lo:r_hi], read_versions[r_lo:r_hi])
                   WITH ORDINALITY AS k(space, pk, read, ord)
              LEFT JOIN mjolnir.versions v ON v.space = k.space AND v.pk = k.pk
             WHERE coalesce(v.version, 0) <> k.read;
            IF stale_reads IS NOT NULL THEN
                outcome := 'conflict';
            ELSIF w_hi < w_lo THEN
                outcome := 'committed';
            ELSE
                BEGIN
                    at_version := nextval('mjolnir.commit_version');
                    PERFORM set_config('role', 'mjolnir_app', true),
                            set_config('mjolnir.user', users[i], true);
                    vals := '{}';
                    FOR j IN w_lo .. w_hi LOOP
                        w := j;
                        val := NULL;
                        EXECUTE write_sqls[j] INTO val USING write_args[j], write_pks[j];
                        GET DIAGNOSTICS matched = ROW_COUNT;
                        IF matched = 0 AND write_checks[j] IS NOT NULL THEN
                            RESET ROLE;
                            EXECUTE write_checks[j] INTO found_row USING write_args[j], write_pks[j];
                            IF found_row THEN
                                RAISE EXCEPTION 'the policies hide this row from the user'
                                    USING ERRCODE = 'MJ403';
                            ELSE
                                RAISE EXCEPTION 'no such row' USING ERRCODE = 'MJ404';
                            END IF;
                        END IF;
                        vals := vals || val;
                    END LOOP;
                    w := NULL;
                    RESET ROLE;
                    SELECT jsonb_build_object('version', at_version::text, 'changes',
                               jsonb_agg(jsonb_build_object(
                                   'key', k.key::jsonb, 'version', at_version::text, 'value', k.val)
                                   ORDER BY k.ord))::text
                      INTO payload
                      FROM unnest(write_keys[w_lo:w_hi], vals) WITH ORDINALITY AS k(key, val, ord);
                    PERFORM mjolnir.finish_commit(at_version, write_spaces[w_lo:w_hi],
                                                  write_pks[w_lo:w_hi], txn_ids[i], payload);
                    IF deferred IS NOT NULL THEN
                        SET CONSTRAINTS ALL IMMEDIATE;
                        EXECUTE format('SET CONSTRAINTS %s DEFERRED', deferred);
                    END IF;
                    new_values := to_jsonb(vals);
                    outcome := 'committed';
                EXCEPTION WHEN OTHERS THEN
                    GET STACKED DIAGNOSTICS err_code = RETURNED_SQLSTATE,
                                            err_message = MESSAGE_TEXT;
                    outcome := 'refused';
                    at_version := NULL;
                    err_write := w - w_lo + 1;
                END;
            END IF;
        END IF;
        RETURN NEXT;
        r_lo := r_hi + 1;
        w_lo := w_hi + 1;
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
REVOKE EXECUTE ON FUNCTION mjolnir.read_as FROM PUBLIC;

-- Replaced by commit_batch.
DROP FUNCTION mjolnir.begin_commit(text, int[], bool[], text[], text[], bool);
DROP FUNCTION mjolnir.begin_batch(int[], bool[], text[], text[], text[], int);
