//! The control methods against an in-memory RAID-5 volume: dispatch through
//! [`answer`], as the socket does.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{json, Value};

use super::replies::{AddReply, AddedAs, ReplaceReply, ScrubReply, SetReply};
use super::status::EngineStatus;

use super::handle::{EngineOps, MemberHandle, Registry, VolumeHandle};
use super::server::answer;
use super::{ControlError, EventLog};
use crate::block::{BlockDevice, BlockError, BoxFuture};
use crate::member::fault::FaultDevice;
use crate::member::memory::MemDevice;
use crate::meta::{assemble, create_array, CreateSpec};
use crate::metrics::stats::{IoStats, StatsDevice};
use crate::raid::{ChunkSize, Geometry, Level, MemberIndex, Volume, VolumeEvents};
use crate::units::ByteOffset;

struct Quiet;

impl VolumeEvents for Quiet {
    fn member_failed(
        &self,
        _: MemberIndex,
        _: &BlockError,
        _: &[crate::raid::MemberState],
    ) -> BoxFuture<'_, ()> {
        crate::block::BoxFuture::new(async {})
    }
}

async fn registry() -> Registry {
    registry_with(None).await
}

async fn registry_with(engine: Option<Arc<dyn EngineOps>>) -> Registry {
    let devs: Vec<Arc<dyn BlockDevice>> = (0..3)
        .map(|i| Arc::new(MemDevice::new(format!("/m{i}"), 8 << 20)) as Arc<dyn BlockDevice>)
        .collect();
    let spec = CreateSpec {
        name: "vol0".into(),
        level: Level::Raid5,
        chunk_size: 64 << 10,
        force: false,
    };
    create_array(&devs, &spec).await.unwrap();
    let named = devs
        .iter()
        .map(|d| (d.name().to_string(), d.clone()))
        .collect();
    let a = assemble(named).await.unwrap();
    let handles: Vec<MemberHandle> = (0..3)
        .map(|r| MemberHandle::new(r, Some(format!("/m{r}"))))
        .collect();
    let members = a
        .members
        .iter()
        .zip(&handles)
        .map(|(m, h)| {
            let w = Arc::new(m.as_ref().unwrap().data.clone()) as Arc<dyn BlockDevice>;
            let f = Arc::new(FaultDevice::new(w, h.faults.clone(), 1));
            Some(Arc::new(StatsDevice::new(f, h.stats.clone())) as Arc<dyn BlockDevice>)
        })
        .collect();
    let g = Geometry::new(
        a.level,
        3,
        ChunkSize::new(u64::from(a.chunk_size)).unwrap(),
        a.data_size,
    )
    .unwrap();
    let vol = Arc::new(Volume::new("vol0".into(), g, members, Arc::new(Quiet)).unwrap());
    let handle = VolumeHandle::new(
        vol,
        a.metadata.clone(),
        IoStats::new(),
        handles,
        Arc::new(EventLog::new()),
        engine,
    );
    Registry::new(vec![Arc::new(handle)])
}

async fn call(reg: &Registry, method: &str, params: Value) -> Value {
    let line = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let reply = answer(line.to_string().as_bytes(), reg).await.unwrap();
    serde_json::from_str(&reply).unwrap()
}

#[tokio::test]
async fn fault_add_list_clear_round_trip() {
    // Arrange
    let reg = registry().await;
    // Act
    let added = call(
        &reg,
        "fault.add",
        json!({"volume": "vol0", "member": "/m1", "kind": "error", "op": "read", "count": 2}),
    )
    .await;
    let listed = call(&reg, "fault.list", json!({})).await;
    let cleared = call(&reg, "fault.clear", json!({"id": added["result"]["id"]})).await;
    let again = call(&reg, "fault.clear", json!({"id": added["result"]["id"]})).await;
    // Assert
    assert_eq!(added["result"]["member"], 1);
    let f = &listed["result"]["faults"][0];
    assert_eq!(
        (f["kind"].as_str(), f["op"].as_str()),
        (Some("error"), Some("read"))
    );
    assert_eq!(
        (f["remaining"].as_u64(), f["active"].as_bool()),
        (Some(2), Some(true))
    );
    assert_eq!(cleared["result"]["cleared"], 1);
    assert_eq!(again["error"]["code"], -32005);
    let kinds: Vec<String> = reg.events().into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds, ["fault_added", "fault_cleared"]);
}

#[tokio::test]
async fn fail_then_remove_changes_member_state_and_volume_state() {
    // Arrange
    let reg = registry().await;
    // Act
    let active_remove = call(&reg, "remove", json!({"volume": "vol0", "member": 2})).await;
    let failed = call(&reg, "fail", json!({"volume": "vol0", "member": 2})).await;
    let second = call(&reg, "fail", json!({"volume": "vol0", "member": 0})).await;
    let removed = call(&reg, "remove", json!({"volume": "vol0", "member": "2"})).await;
    let status = call(&reg, "status", json!({"volume": "vol0"})).await;
    // Assert
    assert_eq!(active_remove["error"]["code"], -32003);
    assert_eq!(failed["result"]["volume_state"], "degraded");
    assert_eq!(second["error"]["code"], -32003, "{second}");
    assert_eq!(removed["result"]["state"], "removed");
    let v = &status["result"]["volumes"][0];
    assert_eq!(v["state"], "degraded");
    assert_eq!(v["members"][2]["state"], "removed");
    // The degraded volume still reads (parity reconstruction).
    let vol = &reg.volumes()[0].volume;
    let mut buf = vec![0u8; 4096];
    vol.read(ByteOffset(64 << 10), &mut buf).await.unwrap();
}

struct FakeEngine;

impl EngineOps for FakeEngine {
    fn add(&self, path: PathBuf, _: bool) -> BoxFuture<'_, Result<AddReply, ControlError>> {
        crate::block::BoxFuture::new(async move {
            Ok(AddReply {
                path,
                added_as: AddedAs::Spare,
                role: None,
                rebuilding: None,
            })
        })
    }
    fn replace(
        &self,
        member: usize,
        path: PathBuf,
        _: bool,
    ) -> BoxFuture<'_, Result<ReplaceReply, ControlError>> {
        crate::block::BoxFuture::new(async move {
            Ok(ReplaceReply {
                path,
                replacing: member,
            })
        })
    }
    fn set_rebuild_max_mbps(&self, mbps: u64) -> BoxFuture<'_, Result<SetReply, ControlError>> {
        crate::block::BoxFuture::new(async move {
            Ok(SetReply {
                rebuild_max_mbps: mbps,
            })
        })
    }
    fn status(&self) -> EngineStatus {
        EngineStatus {
            rebuild_max_mbps: 7,
            ..EngineStatus::default()
        }
    }
}

#[tokio::test]
async fn engine_methods_answer_not_available_until_an_engine_is_registered() {
    // Arrange
    let before = call(
        &registry().await,
        "add",
        json!({"volume": "vol0", "path": "/new"}),
    )
    .await;
    // Act
    let reg = registry_with(Some(Arc::new(FakeEngine))).await;
    let add = call(&reg, "add", json!({"volume": "vol0", "path": "/new"})).await;
    let replace = call(
        &reg,
        "replace",
        json!({"volume": "vol0", "member": "/m1", "path": "/new"}),
    )
    .await;
    let set = call(
        &reg,
        "set",
        json!({"volume": "vol0", "rebuild_max_mbps": 50}),
    )
    .await;
    let bad = call(
        &reg,
        "set",
        json!({"volume": "vol0", "rebuild_max_mbps": "fast"}),
    )
    .await;
    // Assert
    assert_eq!(before["error"]["code"], -32004);
    assert_eq!(add["result"]["path"], "/new");
    assert_eq!(add["result"]["added_as"], "spare");
    assert_eq!(replace["result"]["replacing"], 1);
    assert_eq!(set["result"]["rebuild_max_mbps"], 50);
    assert_eq!(bad["error"]["code"], -32602);
}

#[tokio::test]
async fn notification_runs_but_gets_no_reply() {
    let reg = registry().await;
    let line = br#"{"jsonrpc":"2.0","method":"fault.add","params":{"volume":"vol0","member":0,"kind":"offline"}}"#;
    assert!(answer(line, &reg).await.is_none());
    assert_eq!(reg.volumes()[0].faults().len(), 1);
}

/// Records the scrub request it gets.
struct ScrubEngine(std::sync::Mutex<Vec<crate::control::handle::ScrubRequest>>);

impl EngineOps for ScrubEngine {
    fn add(&self, _: PathBuf, _: bool) -> BoxFuture<'_, Result<AddReply, ControlError>> {
        crate::block::BoxFuture::new(async { Err(ControlError::NotAvailable("add".into())) })
    }
    fn replace(
        &self,
        _: usize,
        _: PathBuf,
        _: bool,
    ) -> BoxFuture<'_, Result<ReplaceReply, ControlError>> {
        crate::block::BoxFuture::new(async { Err(ControlError::NotAvailable("replace".into())) })
    }
    fn set_rebuild_max_mbps(&self, _: u64) -> BoxFuture<'_, Result<SetReply, ControlError>> {
        crate::block::BoxFuture::new(async { Err(ControlError::NotAvailable("set".into())) })
    }
    fn status(&self) -> EngineStatus {
        EngineStatus::default()
    }
    fn scrub(
        &self,
        req: crate::control::handle::ScrubRequest,
    ) -> BoxFuture<'_, Result<ScrubReply, ControlError>> {
        self.0.lock().unwrap().push(req);
        crate::block::BoxFuture::new(
            async move { Ok(ScrubReply::started("vol0".into(), req.repair)) },
        )
    }
}

#[tokio::test]
async fn scrub_method_passes_its_flags_to_the_engine_and_checks_params() {
    // Arrange
    let fake_only = call(&registry().await, "scrub", json!({"volume": "vol0"})).await;
    let engine = Arc::new(ScrubEngine(std::sync::Mutex::new(Vec::new())));
    let reg = registry_with(Some(engine.clone())).await;
    // Act
    let ok = call(
        &reg,
        "scrub",
        json!({"volume": "vol0", "repair": true, "wait": true}),
    )
    .await;
    let cancel = call(&reg, "scrub", json!({"volume": "vol0", "cancel": true})).await;
    let unknown = call(&reg, "scrub", json!({"volume": "nosuch"})).await;
    let bad = call(&reg, "scrub", json!({"volume": "vol0", "repiar": true})).await;
    // Assert
    assert_eq!(fake_only["error"]["code"], -32004);
    assert_eq!(ok["result"]["started"], true);
    assert!(cancel["result"].is_object());
    assert!(unknown["error"]["message"]
        .as_str()
        .unwrap()
        .contains("nosuch"));
    assert_eq!(bad["error"]["code"], -32602);
    let seen = engine.0.lock().unwrap().clone();
    let flags: Vec<(bool, bool, bool)> =
        seen.iter().map(|r| (r.repair, r.cancel, r.wait)).collect();
    assert_eq!(flags, [(true, false, true), (false, true, false)]);
}

#[tokio::test]
async fn a_member_frozen_by_a_power_cut_keeps_its_volatile_rule() {
    // Arrange: a volatile member rule, then the member power cut.
    let reg = registry().await;
    let added = call(
        &reg,
        "fault.add",
        json!({"volume": "vol0", "member": "/m1", "kind": "volatile"}),
    )
    .await;
    let other = call(
        &reg,
        "fault.add",
        json!({"volume": "vol0", "member": "/m2", "kind": "error"}),
    )
    .await;
    let cut = call(
        &reg,
        "fault.powercut",
        json!({"volume": "vol0", "keep": "none", "seed": 1}),
    )
    .await;
    assert_eq!(cut["result"]["members"][0]["member"], 1, "{cut}");
    // Act: clearing it by id, then every rule.
    let by_id = call(&reg, "fault.clear", json!({"id": added["result"]["id"]})).await;
    let all = call(&reg, "fault.clear", json!({})).await;
    // Assert: refused by id with the reason; "all" spares it (the power
    // stays off until a restart), the other rule goes.
    let err = by_id["error"]["message"].as_str().unwrap_or_default();
    assert!(err.contains("lost power"), "{by_id}");
    assert!(all["error"].is_null(), "{all}");
    let listed = call(&reg, "fault.list", json!({})).await;
    let ids: Vec<&Value> = listed["result"]["faults"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| &f["id"])
        .collect();
    assert_eq!(ids, vec![&added["result"]["id"]], "{listed} {other}");
}

/// A stand-in for the rebuild pass: once the volume changes (the
/// operator's abandon), drops the target and records it, as the pass does
/// at its next step. Its waiter is made before it is spawned.
fn fake_pass(h: &Arc<VolumeHandle>, role: usize, replace: bool) -> tokio::task::JoinHandle<()> {
    let (vol, meta) = (h.volume.clone(), h.metadata.clone());
    let mut w = vol.changes().watch();
    tokio::spawn(async move {
        w.changed().await;
        vol.detach_rebuild_target(MemberIndex(role));
        if replace {
            meta.abort_replace(role).await.unwrap();
        } else {
            meta.abort_rebuild(role).await.unwrap();
        }
    })
}

fn new_member() -> Arc<dyn BlockDevice> {
    Arc::new(MemDevice::new("/new", 8 << 20))
}

/// `vraid fail` of a member being rebuilt answers as soon as the pass has
/// let go (paused clock: it never advances, so no poll interval is slept).
#[tokio::test(start_paused = true)]
async fn fail_during_rebuild_answers_when_the_pass_lets_go() {
    let reg = registry().await;
    let h = reg.volumes()[0].clone();
    h.fail(2).await.unwrap();
    let uuid = uuid::Uuid::new_v4();
    let joining = crate::meta::Joining::New;
    h.metadata
        .begin_rebuild(2, new_member(), uuid, joining)
        .await
        .unwrap();
    h.volume
        .attach_rebuild_target(MemberIndex(2), new_member(), 0)
        .unwrap();
    let pass = fake_pass(&h, 2, false);
    let start = tokio::time::Instant::now();
    h.fail(2).await.unwrap();
    assert_eq!(start.elapsed(), std::time::Duration::ZERO);
    assert_eq!(h.member_state(2), super::status::MemberStatusState::Failed);
    pass.await.unwrap();
}

/// The stop of a replace (`vraid fail` of its new member) answers as soon
/// as the pass has let go and the superblocks no longer record it.
#[tokio::test(start_paused = true)]
async fn stop_replace_answers_when_the_pass_lets_go() {
    let reg = registry().await;
    let h = reg.volumes()[0].clone();
    let uuid = uuid::Uuid::new_v4();
    h.metadata
        .begin_replace(0, new_member(), uuid)
        .await
        .unwrap();
    h.volume
        .attach_rebuild_target(MemberIndex(0), new_member(), 0)
        .unwrap();
    let pass = fake_pass(&h, 0, true);
    let start = tokio::time::Instant::now();
    h.stop_replace(0).await.unwrap();
    assert_eq!(start.elapsed(), std::time::Duration::ZERO);
    assert_eq!(h.metadata.replace().await, None);
    pass.await.unwrap();
}

/// A pass that never lets go: the reply still comes, after the bound.
#[tokio::test(start_paused = true)]
async fn stop_replace_gives_up_after_its_bound_when_the_pass_hangs() {
    let reg = registry().await;
    let h = reg.volumes()[0].clone();
    let uuid = uuid::Uuid::new_v4();
    h.metadata
        .begin_replace(0, new_member(), uuid)
        .await
        .unwrap();
    h.volume
        .attach_rebuild_target(MemberIndex(0), new_member(), 0)
        .unwrap();
    let err = h.stop_replace(0).await.unwrap_err();
    assert!(err.to_string().contains("within 30 s"), "{err}");
}
