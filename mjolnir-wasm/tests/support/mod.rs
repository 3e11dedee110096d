//! What the browser tests share: a runtime connected to the test server, and small waits.

#![allow(dead_code)]

use js_sys::{Promise, Reflect};
use mjolnir_wasm::api::connect;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

/// The server `scripts/test.sh` starts, passed at build time.
pub const WS_URL: Option<&str> = option_env!("MJOLNIR_TEST_WS_URL");

#[wasm_bindgen(inline_js = r#"
export function sleep(ms) { return new Promise(function (r) { setTimeout(r, ms); }); }
export function frames(n) {
  return new Promise(function (r) {
    var left = n;
    function next() { if (--left <= 0) r(); else requestAnimationFrame(next); }
    requestAnimationFrame(next);
  });
}
"#)]
extern "C" {
    fn sleep(ms: u32) -> Promise;
    #[wasm_bindgen(js_name = frames)]
    fn animation_frames(n: u32) -> Promise;
}

/// Waits until `n` animation frames have begun: templates render in the first frame after
/// a change, so after two nothing is left to render.
pub async fn frames(n: u32) {
    JsFuture::from(animation_frames(n)).await.unwrap();
}

pub async fn pause(ms: u32) {
    JsFuture::from(sleep(ms)).await.unwrap();
}

pub fn get(obj: &JsValue, name: &str) -> JsValue {
    Reflect::get(obj, &name.into()).unwrap()
}

/// A runtime connected as `user`, as a JavaScript value (the tests drive it as pages do).
pub async fn connected(user: &str) -> JsValue {
    let url = WS_URL
        .expect("MJOLNIR_TEST_WS_URL: run these tests with scripts/test.sh")
        .to_owned();
    let m: JsValue = connect(Some(url), Some(user.to_owned()))
        .expect("connect")
        .into();
    for _ in 0..400 {
        if get(&m, "connection").as_string().as_deref() == Some("open") {
            return m;
        }
        pause(25).await;
    }
    panic!("no connection to the test server");
}
