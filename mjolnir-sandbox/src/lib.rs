//! The embedded JavaScript engine that runs an app's named transactions on the server (the
//! paper's whitelisted transactions): the same source the page runs, in QuickJS, over one
//! transaction attempt of the core ([`mjolnir_core::Attempt`]), so a run yields a read set
//! and a write set that go through the same validation as a client's commit.
//!
//! Each run is sandboxed:
//! - a fresh context, so no state survives from one run to the next (the app's
//!   declarations are evaluated again each time; [`Limits`] and the benchmark say what
//!   that costs);
//! - no file system, network, timers, `document` or `window`: QuickJS has none, and none
//!   is added;
//! - a memory limit and a time limit, both configurable; a run past either is stopped
//!   with a typed error, and the engine instance is replaced before the next run;
//! - `Math.random` and `Date.now` are deterministic, seeded from the transaction
//!   ([`Call::seed`], [`Call::now`]), so a re-run draws the same numbers.
//!
//! A read the attempt does not hold stops the body ([`Ran::Missed`]): the caller fetches
//! the missed keys into the attempt's snapshot and runs again, as the page does.

mod error;

pub use error::SandboxError;

use mjolnir_core::protocol::{PkKind, TableInfo};
use mjolnir_core::{Attempt, Key, Pk, Query, Read, WriteOp};
use rquickjs::{Context, Ctx, Function, Object, Runtime};
use serde_json::{Map, Value, json};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PRELUDE: &str = include_str!("prelude.js");

/// What one run may use.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Bytes the engine may allocate, declarations and all.
    pub memory: usize,
    /// How long a run may take.
    pub time: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: 32 << 20,
            time: Duration::from_millis(100),
        }
    }
}

/// One call of a named transaction.
#[derive(Clone, Debug)]
pub struct Call<'a> {
    pub name: &'a str,
    /// The arguments, a JSON array.
    pub args: &'a Value,
    pub user: Option<&'a str>,
    /// Seeds `Math.random` and the uuids `insert` makes: from the transaction id.
    pub seed: u32,
    /// What `Date.now()` gives, in milliseconds.
    pub now: f64,
}

/// How a run ended, short of an error.
#[derive(Clone, Debug, PartialEq)]
pub enum Ran {
    /// The body returned this (JSON); the attempt holds its reads and writes.
    Returned(Value),
    /// The body read what the attempt does not hold: fetch the attempt's missed keys and
    /// run again.
    Missed,
}

/// An engine for the named transactions of one app: its source, and a QuickJS runtime
/// reused from run to run (each run gets a fresh context in it). Not `Send`: one per
/// thread that runs transactions.
pub struct Sandbox {
    source: String,
    tables: BTreeMap<String, TableInfo>,
    limits: Limits,
    runtime: Runtime,
    /// When the run in progress must stop; the interrupt handler reads it.
    deadline: Arc<Mutex<Option<Instant>>>,
    /// Set by the interrupt handler when it stopped a run.
    interrupted: Arc<AtomicBool>,
}

impl Sandbox {
    /// An engine for `source`, the app's declarations; `tables` says each table's primary
    /// key, so `insert` can make a missing uuid key as the page does.
    pub fn new(
        source: impl Into<String>,
        tables: BTreeMap<String, TableInfo>,
        limits: Limits,
    ) -> Result<Sandbox, SandboxError> {
        let deadline = Arc::new(Mutex::new(None));
        let interrupted = Arc::new(AtomicBool::new(false));
        let runtime = new_runtime(&limits, &deadline, &interrupted)?;
        Ok(Sandbox {
            source: source.into(),
            tables,
            limits,
            runtime,
            deadline,
            interrupted,
        })
    }

    /// Runs `call` over `attempt`: its reads and writes land in the attempt.
    pub fn run(
        &mut self,
        call: &Call<'_>,
        attempt: Attempt,
    ) -> (Result<Ran, SandboxError>, Attempt) {
        let shared = Rc::new(RefCell::new(attempt));
        set(&self.deadline, Some(Instant::now() + self.limits.time));
        self.interrupted.store(false, Ordering::Relaxed);
        let outcome = self.run_in_context(call, &shared);
        set(&self.deadline, None);
        let outcome = match outcome {
            Err(_) if self.interrupted.load(Ordering::Relaxed) => Err(SandboxError::TimeLimit {
                name: call.name.to_owned(),
                limit: self.limits.time,
            }),
            other => other,
        };
        // A run stopped by a limit may leave the engine half-done: replace it.
        if matches!(
            outcome,
            Err(SandboxError::TimeLimit { .. } | SandboxError::MemoryLimit { .. })
        ) && let Ok(fresh) = new_runtime(&self.limits, &self.deadline, &self.interrupted)
        {
            self.runtime = fresh;
        }
        let attempt = Rc::try_unwrap(shared)
            .map(RefCell::into_inner)
            .unwrap_or_else(|shared| shared.borrow().clone());
        (outcome, attempt)
    }

    fn run_in_context(
        &self,
        call: &Call<'_>,
        attempt: &Rc<RefCell<Attempt>>,
    ) -> Result<Ran, SandboxError> {
        let name = call.name.to_owned();
        let context = Context::full(&self.runtime).map_err(|_| SandboxError::MemoryLimit {
            name: name.clone(),
            limit: self.limits.memory,
        })?;
        context.with(|ctx| {
            let fail =
                |ctx: &Ctx<'_>, e: rquickjs::Error| thrown(ctx, &name, self.limits.memory, e);
            let native =
                natives(&ctx, attempt, &self.tables, call.seed).map_err(|e| fail(&ctx, e))?;
            let prelude: Function<'_> = ctx.eval(PRELUDE).map_err(|e| fail(&ctx, e))?;
            let user = call
                .user
                .map_or(Value::Null, |u| Value::String(u.to_owned()));
            let user = ctx
                .json_parse(user.to_string())
                .map_err(|e| fail(&ctx, e))?;
            let api: Object<'_> = prelude
                .call((native, user, call.seed, call.now))
                .map_err(|e| fail(&ctx, e))?;
            ctx.eval::<(), _>(self.source.as_str())
                .map_err(|e| fail(&ctx, e))?;
            let run: Function<'_> = api.get("run").map_err(|e| fail(&ctx, e))?;
            let result = run.call::<_, String>((call.name, call.args.to_string()));
            if attempt.borrow().has_misses() {
                return Ok(Ran::Missed);
            }
            let text = result.map_err(|e| fail(&ctx, e))?;
            let result: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            if result.get("unknown").is_some() {
                return Err(SandboxError::UnknownTransaction { name });
            }
            if result.get("denied").is_some() {
                return Err(SandboxError::Denied { name });
            }
            Ok(Ran::Returned(
                result.get("value").cloned().unwrap_or(Value::Null),
            ))
        })
    }
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("source_bytes", &self.source.len())
            .field("tables", &self.tables.len())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

fn set(deadline: &Mutex<Option<Instant>>, at: Option<Instant>) {
    *deadline.lock().unwrap_or_else(|e| e.into_inner()) = at;
}

fn new_runtime(
    limits: &Limits,
    deadline: &Arc<Mutex<Option<Instant>>>,
    interrupted: &Arc<AtomicBool>,
) -> Result<Runtime, SandboxError> {
    let runtime = Runtime::new().map_err(|e| SandboxError::Engine(e.to_string()))?;
    runtime.set_memory_limit(limits.memory);
    runtime.set_max_stack_size(256 << 10);
    let (deadline, flag) = (deadline.clone(), interrupted.clone());
    runtime.set_interrupt_handler(Some(Box::new(move || {
        let past = deadline
            .lock()
            .map(|d| d.is_some_and(|d| Instant::now() > d))
            .unwrap_or(false);
        if past {
            flag.store(true, Ordering::Relaxed);
        }
        past
    })));
    Ok(runtime)
}

/// The error of a failed JavaScript call, typed: the exception's message and stack, or the
/// memory limit.
fn thrown(ctx: &Ctx<'_>, name: &str, memory: usize, e: rquickjs::Error) -> SandboxError {
    if !matches!(e, rquickjs::Error::Exception) {
        return SandboxError::Engine(e.to_string());
    }
    let caught = ctx.catch();
    let (message, stack) = match caught.as_exception() {
        Some(ex) => (
            ex.message().unwrap_or_default(),
            ex.stack().unwrap_or_default(),
        ),
        None => (
            ctx.json_stringify(caught)
                .ok()
                .flatten()
                .and_then(|s| s.to_string().ok())
                .unwrap_or_else(|| "a value that is not an Error".to_owned()),
            String::new(),
        ),
    };
    if message.contains("out of memory") {
        return SandboxError::MemoryLimit {
            name: name.to_owned(),
            limit: memory,
        };
    }
    SandboxError::Threw {
        name: name.to_owned(),
        message,
        stack,
    }
}

/// The native functions the prelude calls, bound to `attempt`. Each takes and returns JSON
/// text: one conversion per call, and nothing of QuickJS's value model leaks into the core.
fn natives<'js>(
    ctx: &Ctx<'js>,
    attempt: &Rc<RefCell<Attempt>>,
    tables: &BTreeMap<String, TableInfo>,
    seed: u32,
) -> rquickjs::Result<Object<'js>> {
    let native = Object::new(ctx.clone())?;
    let a = attempt.clone();
    native.set(
        "read",
        Function::new(ctx.clone(), move |key: String| -> String {
            let Ok(key) = serde_json::from_str::<Key>(&key) else {
                return json!({"value": null}).to_string();
            };
            match a.borrow_mut().read(key) {
                Read::Value(v) => json!({ "value": v }).to_string(),
                Read::Miss => json!({"miss": true}).to_string(),
            }
        })?,
    )?;
    let a = attempt.clone();
    native.set(
        "query",
        Function::new(
            ctx.clone(),
            move |query: String| -> rquickjs::Result<String> {
                let query: Query = serde_json::from_str(&query).map_err(|e| {
                    rquickjs::Error::new_from_js_message("query", "Query", e.to_string())
                })?;
                if let Some(problem) = query.misshapen() {
                    return Err(rquickjs::Error::new_from_js_message(
                        "query", "Query", problem,
                    ));
                }
                let mut a = a.borrow_mut();
                let Some(view) = a.query_view(&query) else {
                    return Ok(json!({"miss": true}).to_string());
                };
                if query.count {
                    return Ok(json!({ "count": view.count }).to_string());
                }
                let rows: Vec<Value> = view
                    .rows
                    .into_iter()
                    .map(|r| json!({"pk": r.pk, "value": r.value}))
                    .collect();
                Ok(json!({ "rows": rows }).to_string())
            },
        )?,
    )?;
    let a = attempt.clone();
    native.set(
        "write",
        Function::new(
            ctx.clone(),
            move |key: String, op: String| -> rquickjs::Result<()> {
                let bad = |e: serde_json::Error| {
                    rquickjs::Error::new_from_js_message("write", "Write", e.to_string())
                };
                let key: Key = serde_json::from_str(&key).map_err(bad)?;
                let op: WriteOp = serde_json::from_str(&op).map_err(bad)?;
                a.borrow_mut().write(key, op);
                Ok(())
            },
        )?,
    )?;
    let a = attempt.clone();
    let tables = tables.clone();
    let uuids = RefCell::new(Uuids(seed ^ 0x5bd1_e995));
    native.set(
        "insert",
        Function::new(
            ctx.clone(),
            move |table: String, row: String| -> rquickjs::Result<String> {
                let refuse = |m: String| rquickjs::Error::new_from_js_message("insert", "row", m);
                let mut row: Map<String, Value> =
                    serde_json::from_str(&row).map_err(|e| refuse(e.to_string()))?;
                let info = tables.get(&table).ok_or_else(|| {
                    refuse(format!("no table {}", mjolnir_core::key::quoted(&table)))
                })?;
                let pk = match row.get(&info.pk) {
                    Some(Value::String(s)) => Pk::Text(s.clone()),
                    Some(Value::Number(n)) if n.is_i64() => Pk::Int(n.as_i64().unwrap_or_default()),
                    Some(other) => return Err(refuse(format!("{} cannot be {other}", info.pk))),
                    None if info.pk_kind == PkKind::Uuid => {
                        let id = uuids.borrow_mut().next();
                        row.insert(info.pk.clone(), Value::String(id.clone()));
                        Pk::Text(id)
                    }
                    None => {
                        return Err(refuse(format!(
                            "insert into {table} needs its key, {}",
                            info.pk
                        )));
                    }
                };
                let out = json!({ "pk": pk, "row": row });
                a.borrow_mut().insert(Key::row(table.clone(), pk), row);
                Ok(out.to_string())
            },
        )?,
    )?;
    Ok(native)
}

/// Version 4 uuids from a seeded generator: a run and its re-run insert the same keys.
struct Uuids(u32);

impl Uuids {
    fn next(&mut self) -> String {
        let mut bytes = [0u8; 16];
        for chunk in bytes.chunks_mut(4) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 17;
            self.0 ^= self.0 << 5;
            chunk.copy_from_slice(&self.0.to_le_bytes());
        }
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        )
    }
}

#[cfg(test)]
mod tests;
