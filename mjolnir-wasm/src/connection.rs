//! The WebSocket to the server: framing, reconnecting, and nothing else.
//!
//! Messages go out through [`Connection::send`] while the socket is open and are dropped
//! while it is not: the runtime keeps every request it still waits for and sends them all
//! again after each welcome (commits keep their transaction ids, so the server answers a
//! re-sent commit instead of applying it twice).

use mjolnir_core::protocol::TableInfo;
use mjolnir_core::{ClientMessage, PROTOCOL_VERSION, RetryPolicy};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Weak;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{CloseEvent, MessageEvent, WebSocket};

/// Whether the runtime can talk to the server. Visible to the app as `mjolnir.connection`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    Connecting,
    Open,
    Disconnected,
}

impl ConnState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnState::Connecting => "connecting",
            ConnState::Open => "open",
            ConnState::Disconnected => "disconnected",
        }
    }
}

/// What the connection tells its owner.
pub trait Events {
    fn on_welcome(&self, user: Option<String>, tables: BTreeMap<String, TableInfo>);
    fn on_message(&self, text: String);
    fn on_state(&self, state: ConnState, reason: Option<String>);
}

/// Reconnect delays, by the same rule as conflict retries: 100 ms doubling to 5 s, with
/// full jitter so that a restarted server is not hit by every client at the same
/// instant, and no end to the attempts.
const RECONNECT: RetryPolicy = RetryPolicy {
    max_attempts: u32::MAX,
    base_delay_ms: 100,
    max_delay_ms: 5000,
};

#[derive(Debug)]
pub struct Connection {
    pub url: String,
    pub user: Option<String>,
    pub client_id: String,
    pub state: ConnState,
    ws: Option<WebSocket>,
    failures: u32,
    welcomed: bool,
    handlers: Option<Handlers>,
}

/// The socket's event handlers, kept alive while the socket is. Replaced only when a new
/// socket opens, from a timer, never while one of them runs.
struct Handlers(
    #[allow(dead_code)] Closure<dyn FnMut()>,
    #[allow(dead_code)] Closure<dyn FnMut(MessageEvent)>,
    #[allow(dead_code)] Closure<dyn FnMut(CloseEvent)>,
);

impl std::fmt::Debug for Handlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Handlers")
    }
}

impl Connection {
    pub fn new(url: String, user: Option<String>, client_id: String) -> Self {
        Connection {
            url,
            user,
            client_id,
            state: ConnState::Disconnected,
            ws: None,
            failures: 0,
            welcomed: false,
            handlers: None,
        }
    }

    pub fn is_open(&self) -> bool {
        self.state == ConnState::Open && self.welcomed
    }

    /// Sends now if the connection is open; otherwise the message is dropped, and the
    /// runtime sends it again after the next welcome.
    pub fn send(&self, msg: &ClientMessage) {
        if let Some(ws) = self.ws.as_ref().filter(|_| self.is_open()) {
            let _ = ws.send_with_str(&msg.to_json());
        }
    }
}

/// Opens (or re-opens) the socket. `owner` receives the events; the connection lives in
/// `conn`, borrowed only briefly and never while calling the owner.
pub fn open<E: Events + 'static>(
    conn: &RefCell<Connection>,
    owner: Weak<E>,
    weak_conn: Weak<RefCell<Connection>>,
) -> Result<(), JsValue> {
    let url = conn.borrow().url.clone();
    let ws = WebSocket::new(&url)?;
    {
        let mut c = conn.borrow_mut();
        c.state = ConnState::Connecting;
        c.welcomed = false;
        c.ws = Some(ws.clone());
    }
    let onopen = {
        let (ws, wc) = (ws.clone(), weak_conn.clone());
        Closure::<dyn FnMut()>::new(move || {
            let Some(conn) = wc.upgrade() else { return };
            let (user, client_id) = {
                let c = conn.borrow();
                (c.user.clone(), c.client_id.clone())
            };
            let hello = ClientMessage::Hello {
                protocol: PROTOCOL_VERSION,
                client_id,
                user,
            };
            let _ = ws.send_with_str(&hello.to_json());
        })
    };
    let onmessage = {
        let (owner, wc) = (owner.clone(), weak_conn.clone());
        Closure::<dyn FnMut(MessageEvent)>::new(move |e: MessageEvent| {
            let Some(text) = e.data().as_string() else {
                return;
            };
            let (Some(owner), Some(conn)) = (owner.upgrade(), wc.upgrade()) else {
                return;
            };
            let welcomed = conn.borrow().welcomed;
            if !welcomed {
                match mjolnir_core::ServerMessage::parse(&text) {
                    Ok(mjolnir_core::ServerMessage::Welcome { user, tables, .. }) => {
                        {
                            let mut c = conn.borrow_mut();
                            c.welcomed = true;
                            c.state = ConnState::Open;
                            c.failures = 0;
                        }
                        owner.on_welcome(user, tables);
                        owner.on_state(ConnState::Open, None);
                    }
                    _ => owner.on_message(text),
                }
                return;
            }
            owner.on_message(text);
        })
    };
    let onclose = {
        let (owner, wc) = (owner.clone(), weak_conn.clone());
        Closure::<dyn FnMut(CloseEvent)>::new(move |e: CloseEvent| {
            let Some(conn) = wc.upgrade() else { return };
            let delay = {
                let mut c = conn.borrow_mut();
                c.state = ConnState::Disconnected;
                c.welcomed = false;
                c.ws = None;
                c.failures = c.failures.saturating_add(1);
                // After failure n comes attempt n + 1, whose ceiling is 100 ms · 2^(n-1).
                RECONNECT
                    .delay(c.failures.saturating_add(1), js_sys::Math::random())
                    .map_or(0, |d| d.as_millis() as i32)
            };
            let reason = format!(
                "closed ({}{}{})",
                e.code(),
                if e.reason().is_empty() { "" } else { ": " },
                e.reason()
            );
            if let Some(owner) = owner.upgrade() {
                owner.on_state(ConnState::Disconnected, Some(reason));
            }
            let (owner, wc) = (owner.clone(), wc.clone());
            let retry = Closure::once_into_js(move || {
                if let Some(conn) = wc.upgrade() {
                    let _ = open(&conn, owner, wc.clone());
                }
            });
            crate::auto::set_timeout(&retry, delay);
        })
    };
    ws.set_onopen(Some(onopen.as_ref().unchecked_ref()));
    ws.set_onmessage(Some(onmessage.as_ref().unchecked_ref()));
    ws.set_onclose(Some(onclose.as_ref().unchecked_ref()));
    conn.borrow_mut().handlers = Some(Handlers(onopen, onmessage, onclose));
    Ok(())
}
