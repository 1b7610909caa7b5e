//! `skiff pki`: certificates for TLS between clients and members.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

#[derive(Subcommand)]
pub(crate) enum PkiCommand {
    /// Create a CA plus server, peer and client certificates (ca.pem, server.pem, ...).
    Init {
        /// Directory to write the PEM files to.
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
        /// DNS names and IP addresses the server and peer certificates are valid for.
        #[arg(long, value_delimiter = ',', default_value = "127.0.0.1,localhost")]
        hosts: Vec<String>,
    },
}

impl PkiCommand {
    pub(crate) fn run(self) -> ExitCode {
        match self {
            PkiCommand::Init { dir, hosts } => match skiff_store::pki::init(&dir, &hosts) {
                Ok(written) => {
                    for path in written {
                        println!("{}", path.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("skiff: {err}");
                    ExitCode::FAILURE
                }
            },
        }
    }
}
