-- The two halves of a commit that run as Mjölnir itself (not as the app's role).
-- They exist to save round trips; docs/architecture.md walks through a whole commit.

-- First statement of every commit: take the key locks, then read the versions to
-- validate. Locks are transaction-scoped advisory locks on a 32-bit hash of each key
-- (in the Mjölnir lock class 1298755436, 'Mjol'), taken in ascending hash order so two
-- commits never wait for each other in a cycle. Written keys are locked exclusively,
-- keys only read are locked shared. A hash collision only makes two unrelated keys wait
-- for each other: never a wrong answer.
--
-- Then, still under the locks, it checks whether txn_id already committed (raising
-- MJ001 if so). A re-sent commit racing its first attempt waits for the first attempt's
-- locks, so it always sees that attempt's outcome here, never its effects as a conflict.
--
-- Returns the current version of each (read_spaces[i], read_pks[i]) (0 if never
-- written), then, if want_version, a new commit version as the last element. The version
-- is drawn after the locks are held: two commits that share a key get versions in the
-- order they commit.
CREATE FUNCTION mjolnir.begin_commit(
    txn_id text,
    lock_hashes int[], lock_exclusive bool[],
    read_spaces text[], read_pks text[],
    want_version bool
) RETURNS bigint[]
LANGUAGE plpgsql AS $$
DECLARE
    result bigint[];
BEGIN
    FOR i IN 1 .. coalesce(array_length(lock_hashes, 1), 0) LOOP
        IF lock_exclusive[i] THEN
            PERFORM pg_advisory_xact_lock(1298755436, lock_hashes[i]);
        ELSE
            PERFORM pg_advisory_xact_lock_shared(1298755436, lock_hashes[i]);
        END IF;
    END LOOP;
    IF EXISTS (SELECT 1 FROM mjolnir.txns WHERE txn = txn_id) THEN
        RAISE EXCEPTION 'transaction % already committed', txn_id USING ERRCODE = 'MJ001';
    END IF;
    SELECT coalesce(array_agg(coalesce(v.version, 0) ORDER BY k.ord), '{}')
      INTO result
      FROM unnest(read_spaces, read_pks) WITH ORDINALITY AS k(space, pk, ord)
      LEFT JOIN mjolnir.versions v ON v.space = k.space AND v.pk = k.pk;
    IF want_version THEN
        result := result || nextval('mjolnir.commit_version');
    END IF;
    RETURN result;
END
$$;

-- Last statement before COMMIT: record the new versions of the written keys, the
-- transaction id (for deduplication) and announce the change set to every instance.
-- Runs as its owner because the app's writes before it ran as mjolnir_app.
--
-- Two commits of one txn id with no key in common do not wait for each other's locks:
-- the second then waits here on the primary key until the first ends, and if the first
-- committed, this raises MJ001 and the server answers with the first outcome.
CREATE FUNCTION mjolnir.finish_commit(
    commit_version bigint, spaces text[], pks text[], txn_id text, changes text
) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, mjolnir AS $$
BEGIN
    INSERT INTO mjolnir.txns (txn, version) VALUES (txn_id, commit_version)
        ON CONFLICT (txn) DO NOTHING;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'transaction % already committed', txn_id USING ERRCODE = 'MJ001';
    END IF;
    INSERT INTO mjolnir.versions (space, pk, version)
        SELECT s, p, commit_version FROM unnest(spaces, pks) AS k(s, p)
        ON CONFLICT (space, pk) DO UPDATE SET version = EXCLUDED.version;
    -- NOTIFY payloads are limited to 8000 bytes; larger change sets go through the log.
    IF octet_length(changes) < 7900 THEN
        PERFORM pg_notify('mjolnir_commits', changes);
    ELSE
        INSERT INTO mjolnir.commit_log (version, changes) VALUES (commit_version, changes::jsonb);
        PERFORM pg_notify('mjolnir_commits', json_build_object('version', commit_version::text, 'logged', true)::text);
    END IF;
END
$$;

GRANT EXECUTE ON FUNCTION mjolnir.finish_commit(bigint, text[], text[], text, text) TO mjolnir_app;
