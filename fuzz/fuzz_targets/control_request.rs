//! Fuzzes the control socket's request handling: any line gives a JSON-RPC
//! reply (or none for a notification), never a panic. Dispatch runs against
//! an empty registry, so every method reaches its parameter checks.
#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use vraid::control::server::answer;
use vraid::control::Registry;

fuzz_target!(|data: &[u8]| {
    let registry = Registry::default();
    let mut fut = pin!(answer(data, &registry));
    let mut cx = Context::from_waker(Waker::noop());
    // With no volumes nothing awaits I/O: the first poll completes.
    if let Poll::Ready(Some(reply)) = fut.as_mut().poll(&mut cx) {
        let v: serde_json::Value = serde_json::from_str(&reply).expect("reply is JSON");
        assert_eq!(v["jsonrpc"], "2.0");
    }
});
