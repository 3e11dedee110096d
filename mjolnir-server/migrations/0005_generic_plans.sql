-- The commit and read functions run with generic plans only.
--
-- PL/pgSQL caches a plan for each of its statements, but under the default
-- plan_cache_mode (auto) a statement whose parameters are arrays is planned afresh for
-- each call ("custom" plans) as long as the planner's estimates favour that, and for
-- commit_batch's statements they always did: at 32 clients about 40 % of PostgreSQL's
-- CPU went to planning (perf), about as much as to executing. Every lookup in these
-- functions is written to be an index scan under a generic plan (0004: the correlated
-- subqueries), so nothing is lost by planning each statement once per connection.
-- Dynamic EXECUTEs (the writes the server builds) are still planned at each call.
ALTER FUNCTION mjolnir.commit_batch SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION mjolnir.announce SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION mjolnir.read_as SET plan_cache_mode = force_generic_plan;
