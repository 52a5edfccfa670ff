//! `xeno export`: streams a CSV of customers (a segment's members, or the
//! customers matching a filter or search) from a running server to stdout or
//! a file.
//!
//! The body is written chunk by chunk as it arrives: exports have millions of
//! rows and must not be held in memory.

use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow};
use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{ApiClient, DEFAULT_SERVER};

/// Arguments of `xeno export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The organization the customers belong to.
    #[arg(long, value_name = "ORG")]
    pub org: String,

    /// Export the members of this segment.
    #[arg(long, value_name = "ID", conflicts_with_all = ["filter", "search"])]
    pub segment: Option<String>,

    /// Export the customers matching this filter expression.
    #[arg(long, value_name = "DSL")]
    pub filter: Option<String>,

    /// Export the customers matching this text search.
    #[arg(long, value_name = "TEXT")]
    pub search: Option<String>,

    /// The server's base URL. The API key is read from XENO_API_KEY.
    #[arg(long, value_name = "URL", default_value = DEFAULT_SERVER)]
    pub server: String,

    /// Write the CSV to this file instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "PATH")]
    pub output: Option<PathBuf>,
}

/// Runs `xeno export`.
pub fn run(args: ExportArgs) -> ExitCode {
    super::block_on(async move {
        match export(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => super::report_error(&e),
        }
    })
}

/// The export URL the arguments describe.
fn export_url(client: &ApiClient, args: &ExportArgs) -> reqwest::Url {
    if let Some(segment) = &args.segment {
        return client.org_url(&["segments", segment, "export"]);
    }
    let mut url = client.org_url(&["exports", "customers"]);
    {
        let mut query = url.query_pairs_mut();
        if let Some(filter) = &args.filter {
            query.append_pair("filter", filter);
        }
        if let Some(search) = &args.search {
            query.append_pair("q", search);
        }
    }
    // No filter nor search: no dangling `?`.
    if url.query() == Some("") {
        url.set_query(None);
    }
    url
}

async fn export(args: ExportArgs) -> anyhow::Result<()> {
    let client = ApiClient::from_env(&args.server, &args.org)?;
    let url = export_url(&client, &args);
    // The status is known before anything is written: a refused export
    // leaves no empty or half file behind.
    let mut response = super::send(client.get(url)).await?;

    let (mut sink, destination): (Box<dyn Write>, Option<&PathBuf>) = match &args.output {
        Some(path) => {
            let file =
                File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
            (Box::new(io::BufWriter::new(file)), Some(path))
        }
        None => (Box::new(io::BufWriter::new(io::stdout().lock())), None),
    };
    let where_to = || match destination {
        Some(path) => path.display().to_string(),
        None => "stdout".to_string(),
    };

    // A byte counter only when the CSV does not go to the terminal the
    // counter would draw on.
    let show_progress = destination.is_some() && io::stderr().is_terminal();
    let bar = show_progress.then(|| {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} exporting {bytes} {bytes_per_sec}")
                .expect("a valid template"),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    });

    let mut written: u64 = 0;
    // Blocking writes are fine here: this runtime runs nothing but this
    // command, and the writes are what throttles the download anyway.
    let outcome: anyhow::Result<()> = async {
        loop {
            let chunk = response.chunk().await.map_err(|e| {
                anyhow!(
                    "the export broke off after {} ({e}); {} is incomplete",
                    HumanBytes(written),
                    where_to()
                )
            })?;
            let Some(chunk) = chunk else { break };
            match sink.write_all(&chunk) {
                Ok(()) => {}
                // The reader went away (`xeno export ... | head`): it has
                // what it wanted, which is not an error.
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
                Err(e) => return Err(anyhow!(e).context(format!("cannot write {}", where_to()))),
            }
            written += chunk.len() as u64;
            if let Some(bar) = &bar {
                bar.set_position(written);
            }
        }
        match sink.flush() {
            Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
                Err(anyhow!(e).context(format!("cannot write {}", where_to())))
            }
            _ => Ok(()),
        }
    }
    .await;

    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    outcome?;
    if let Some(path) = destination {
        eprintln!("exported {} to {}", HumanBytes(written), path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct TestCli {
        #[command(flatten)]
        export: ExportArgs,
    }

    fn parse(extra: &[&str]) -> Result<ExportArgs, clap::Error> {
        let mut argv = vec!["xeno-export", "--org", "acme"];
        argv.extend_from_slice(extra);
        TestCli::try_parse_from(argv).map(|cli| cli.export)
    }

    fn url(extra: &[&str]) -> String {
        let args = parse(extra).expect("valid arguments");
        let client = ApiClient::new(
            super::super::parse_server(&args.server).unwrap(),
            &args.org,
            "key".into(),
        )
        .unwrap();
        export_url(&client, &args).to_string()
    }

    #[test]
    fn a_segment_or_a_filter_and_search_choose_the_route() {
        assert_eq!(
            url(&["--segment", "vip"]),
            "http://127.0.0.1:8080/api/v1/orgs/acme/segments/vip/export"
        );
        assert_eq!(
            url(&[
                "--filter",
                "total_spend > 100 & country = \"FR\"",
                "--search",
                "anne"
            ]),
            "http://127.0.0.1:8080/api/v1/orgs/acme/exports/customers\
             ?filter=total_spend+%3E+100+%26+country+%3D+%22FR%22&q=anne"
        );
        assert_eq!(
            url(&[]),
            "http://127.0.0.1:8080/api/v1/orgs/acme/exports/customers"
        );
    }

    #[test]
    fn a_segment_excludes_filter_and_search() {
        for other in [["--filter", "a = 1"], ["--search", "anne"]] {
            let mut argv = vec!["--segment", "vip"];
            argv.extend_from_slice(&other);
            let error = parse(&argv).map(|_| ()).unwrap_err();
            assert_eq!(error.exit_code(), 2);
        }
    }
}
