//! SIGINT/SIGTERM: the first stops taking new groups and lets the run finish; the second
//! exits at once.

use super::*;

/// First SIGINT/SIGTERM: stop taking new groups and finish; the second: exit at once.
pub(super) fn install_signal_handler(stop: CancellationToken) {
    tokio::spawn(async move {
        let mut signals = 0;
        loop {
            wait_for_signal().await;
            signals += 1;
            if signals == 1 {
                tracing::warn!(
                    "signal received: finishing requests in flight, then writing the report (signal again to exit now)"
                );
                stop.cancel();
            } else {
                eprintln!("license-batch: second signal, exiting now");
                std::process::exit(exit_code::INTERRUPTED as i32);
            }
        }
    });
}

#[cfg(unix)]
pub(super) async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(not(unix))]
pub(super) async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
