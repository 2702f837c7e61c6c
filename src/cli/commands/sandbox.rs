//! `license-batch sandbox`: the simulator as a server until a signal, with its ground truth on request.

use super::super::*;

pub(in crate::cli) async fn serve_sandbox(args: SandboxArgs) -> Result<u8, Error> {
    let mut scenario = match &args.scenario {
        Some(path) => Scenario::load(path).map_err(Error::Sandbox)?,
        None => Scenario::default(),
    };
    args.faults.apply(&mut scenario);
    let server = Sandbox::start(scenario, args.listen)
        .await
        .map_err(Error::Sandbox)?;
    let url = &server.url;
    // A closed stdout (e.g. `| head -1`) must not take the server down with it.
    let mut stdout = std::io::stdout();
    let _ = writeln!(
        stdout,
        "sandbox listening on {url}\n\
         point license-batch at it with (sandbox credentials are not secret):\n  \
         export LICENSE_BATCH_API_BASE_URL={url} LICENSE_BATCH_AUTH_AUTHORITY={url}\n  \
         export LICENSE_BATCH_TENANT_ID={} LICENSE_BATCH_CLIENT_ID={}\n  \
         export LICENSE_BATCH_CLIENT_SECRET={} LICENSE_BATCH_REFRESH_TOKEN={}\n\
         ground truth: GET {url}sandbox/record\n\
         stop with Ctrl-C",
        sandbox::TENANT_ID,
        sandbox::CLIENT_ID,
        sandbox::CLIENT_SECRET,
        sandbox::REFRESH_TOKEN
    );
    wait_for_signal().await;
    if let Some(path) = &args.dump {
        let json = serde_json::to_string_pretty(&server.dump()).expect("JSON serialises");
        std::fs::write(path, json).map_err(|source| Error::Write {
            path: path.clone(),
            source,
        })?;
        eprintln!("ground truth written to {}", path.display());
    }
    Ok(exit_code::ALL_SUCCEEDED)
}
