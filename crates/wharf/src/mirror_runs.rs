//! The scheduler of the registry's own mirrors (`[[mirrors]]`): one task per mirror runs it at
//! start, then `interval` after each run ends, or sooner when `POST .../run` asks. A run is
//! `wharf_sync::run_mirror` (the `wharf sync` engine) pushing into this registry over loopback;
//! its outcome goes on the server's `MirrorBoard`, which the status API and `/metrics` read.
//!
//! With several replicas on one PostgreSQL database, a run holds the advisory lock
//! `mirror:<name>` (wharf-metadata `try_lock`): a replica that finds it taken skips that run.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use wharf_registry::Registry;
use wharf_registry::events::rfc3339_millis;
use wharf_server::{MirrorBoard, MirrorInfo, RunFailure, RunSummary};
use wharf_sync::{LocalTarget, MirrorSpec, SyncReport};

/// The board of `specs` (validated at load), for the server's handlers.
pub(crate) fn board(specs: &[MirrorSpec]) -> anyhow::Result<Arc<MirrorBoard>> {
    let infos = specs
        .iter()
        .map(|s| Ok(MirrorInfo { name: s.name.clone(), source: s.source.clone(), dest: s.dest_repo()? }))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Arc::new(MirrorBoard::new(infos)))
}

/// The address a run reaches this server at: the listening address, or loopback when it
/// listens on every interface.
pub(crate) fn loopback_host(local: SocketAddr) -> String {
    let ip = match local.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, local.port()).to_string()
}

/// Start one scheduling task per mirror.
pub(crate) fn start(
    specs: Vec<MirrorSpec>,
    target: LocalTarget,
    board: Arc<MirrorBoard>,
    registry: Registry,
) {
    for spec in specs {
        tokio::spawn(schedule(spec, target.clone(), board.clone(), registry.clone()));
    }
}

async fn schedule(spec: MirrorSpec, target: LocalTarget, board: Arc<MirrorBoard>, registry: Registry) {
    let Ok(interval) = spec.interval() else {
        tracing::error!(mirror = %spec.name, "invalid interval (it was checked at load): mirror not scheduled");
        return;
    };
    tracing::info!(mirror = %spec.name, source = %spec.source, dest = %spec.dest, every = %spec.interval, "mirror scheduled");
    loop {
        board.set_next_run(&spec.name, SystemTime::now());
        run_once(&spec, &target, &board, &registry).await;
        board.set_next_run(&spec.name, SystemTime::now() + interval);
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = board.requested(&spec.name) => {}
        }
    }
}

async fn run_once(spec: &MirrorSpec, target: &LocalTarget, board: &MirrorBoard, registry: &Registry) {
    let meta = registry.metadata();
    let name = spec.name.as_str();
    let started = SystemTime::now();
    let lock = match meta.try_lock(&format!("mirror:{name}")).await {
        Ok(Some(lock)) => lock,
        Ok(None) => {
            tracing::info!(mirror = name, "mirror is running on another replica: this run is skipped");
            board.run_skipped(name);
            return;
        }
        Err(e) => {
            tracing::warn!(mirror = name, error = %e, "mirror run not started: cannot take its lock");
            let failure =
                RunFailure { image: spec.source.clone(), error: format!("taking the mirror's lock: {e}") };
            board.run_finished(name, failed(started, failure));
            return;
        }
    };
    board.run_started(name);
    // On a blocking-pool thread of its own, driven by this runtime: a panic in the engine ends
    // this run, not the schedule, and the engine's future need not be `Send` (rustc cannot
    // prove it for its stream combinators, rust-lang/rust#102211).
    let run = {
        let (spec, target) = (spec.clone(), target.clone());
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || runtime.block_on(wharf_sync::run_mirror(&spec, &target)))
    };
    let summary = match run.await {
        Ok(Ok(report)) => summary(spec, started, &report),
        Ok(Err(e)) => failed(started, RunFailure { image: spec.source.clone(), error: e.to_string() }),
        Err(e) => {
            failed(started, RunFailure { image: spec.source.clone(), error: format!("the run crashed: {e}") })
        }
    };
    if summary.ok {
        tracing::info!(
            mirror = name,
            images = summary.images,
            bytes_copied = summary.bytes_copied,
            bytes_existing = summary.bytes_existing,
            bytes_filtered = summary.bytes_filtered,
            "mirror run finished"
        );
    } else {
        for f in &summary.failures {
            tracing::warn!(mirror = name, image = %f.image, error = %f.error, "mirror run: image failed");
        }
    }
    notify(registry, spec, &summary).await;
    board.run_finished(name, summary);
    if let Err(e) = lock.release().await {
        tracing::warn!(mirror = name, error = %e, "releasing the mirror's lock failed (its connection was closed)");
    }
}

/// Queue the `mirror_run` webhook event of a finished run (runs skipped or never started
/// because of the lock are not runs).
async fn notify(registry: &Registry, spec: &MirrorSpec, s: &RunSummary) {
    let Ok(dest) = spec.dest_repo() else { return };
    let run = serde_json::json!({
        "source": spec.source,
        "started": rfc3339_millis(s.started),
        "finished": rfc3339_millis(s.finished),
        "ok": s.ok,
        "images": s.images,
        "bytes_copied": s.bytes_copied,
        "bytes_existing": s.bytes_existing,
        "bytes_filtered": s.bytes_filtered,
        "failures": s.failures.iter().map(|f| serde_json::json!({ "image": f.image, "error": f.error })).collect::<Vec<_>>(),
    });
    if let Err(e) = registry.notify_mirror_run(&spec.name, &dest, run).await {
        tracing::warn!(mirror = %spec.name, error = %e, "cannot queue the mirror_run webhook event");
    }
}

fn failed(started: SystemTime, failure: RunFailure) -> RunSummary {
    RunSummary {
        started,
        finished: SystemTime::now(),
        ok: false,
        images: 0,
        bytes_copied: 0,
        bytes_existing: 0,
        bytes_filtered: 0,
        failures: vec![failure],
    }
}

fn summary(spec: &MirrorSpec, started: SystemTime, r: &SyncReport) -> RunSummary {
    let mut failures: Vec<RunFailure> = r
        .failed()
        .map(|row| RunFailure {
            image: row.source.clone(),
            error: row.error.clone().unwrap_or_else(|| "failed".into()),
        })
        .collect();
    failures.extend(r.errors.iter().map(|e| RunFailure { image: spec.source.clone(), error: e.clone() }));
    RunSummary {
        started,
        finished: SystemTime::now(),
        ok: r.is_success(),
        images: r.images.len() as u64,
        bytes_copied: r.bytes_copied,
        bytes_existing: r.bytes_existing,
        bytes_filtered: r.bytes_filtered,
        failures,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_for_wildcard_addresses() {
        let h = |s: &str| super::loopback_host(s.parse().unwrap());
        assert_eq!(h("0.0.0.0:5000"), "127.0.0.1:5000");
        assert_eq!(h("[::]:5000"), "[::1]:5000");
        assert_eq!(h("10.1.2.3:443"), "10.1.2.3:443");
    }
}
