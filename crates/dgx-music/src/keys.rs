//! `dgx-music keys`: the API keys of a data directory. The commands work on the database itself,
//! so they need no running server and take effect on a running one at its next request.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;
use dgx_music_server::keys::{ApiKey, NewKey};
use dgx_music_server::store::{Database, DatabaseUrl, KeyStore, Leases};

#[derive(clap::Args)]
#[command(after_help = "Examples:\n  \
    dgx-music keys create --name laptop\n  \
    dgx-music keys list\n  \
    dgx-music keys revoke laptop\n\n\
    Clients send the key as the header Authorization: Bearer <key>; the web page asks for it.\n\
    A server on a non-loopback --host needs a key to start (or --insecure-no-auth).")]
pub struct Args {
    #[command(subcommand)]
    command: Command,
    /// The server's data directory [default: the platform's data directory + dgx-music].
    #[arg(long, env = "DGX_MUSIC_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// The server's --database, if it has one (postgres:// for API nodes that share it) [default:
    /// dgx-music.db in the data directory].
    #[arg(long, env = "DGX_MUSIC_DATABASE", value_name = "URL", global = true)]
    database: Option<DatabaseUrl>,
}

#[derive(Subcommand)]
enum Command {
    /// Make a key and print its token, which is shown only this once.
    Create {
        /// Who or what the key is for, e.g. laptop.
        #[arg(long)]
        name: String,
        /// An admin key sees and deletes every job, not only its own.
        #[arg(long)]
        admin: bool,
    },
    /// List the keys (never their tokens).
    List {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key, named by its id, its prefix (dgxm_…) or its name; its jobs stay.
    Revoke { key: String },
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let data_dir = match args.data_dir {
        Some(dir) => dir,
        None => crate::serve::default_data_dir()?,
    };
    let url = args.database.unwrap_or_else(|| DatabaseUrl::Sqlite(data_dir.join("dgx-music.db")));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        if let DatabaseUrl::Sqlite(path) = &url {
            let dir = path.parent().unwrap_or(&data_dir);
            std::fs::create_dir_all(dir).with_context(|| format!("data directory {}", dir.display()))?;
        }
        let database = Database::open(&url, Leases::default()).await?;
        let result = command(&*database.keys(), args.command).await;
        database.close().await;
        result
    })
}

async fn command(store: &dyn KeyStore, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Create { name, admin } => {
            let name = name.trim();
            if name.is_empty() || name.chars().any(char::is_control) || name.len() > 100 {
                bail!("--name must be 1 to 100 printable characters, e.g. --name laptop");
            }
            let new = NewKey::generate(name, admin)?;
            store.insert_key(&new).await?;
            eprintln!(
                "created {}key {:?} ({}); its token, shown only now:",
                if admin { "admin " } else { "" },
                name,
                new.key.prefix
            );
            println!("{}", new.token);
        }
        Command::List { json } => {
            let keys = store.keys().await?;
            if json {
                let views: Vec<_> = keys.iter().map(ApiKey::view).collect();
                println!("{}", serde_json::to_string_pretty(&views)?);
            } else if keys.is_empty() {
                eprintln!("no keys yet: dgx-music keys create --name NAME");
            } else {
                println!("{:<36}  {:<13}  {:<5}  {:<8}  name", "id", "prefix", "admin", "state");
                for key in &keys {
                    let state = if key.revoked_at.is_some() { "revoked" } else { "active" };
                    let admin = if key.admin { "yes" } else { "no" };
                    println!("{:<36}  {:<13}  {admin:<5}  {state:<8}  {}", key.id, key.prefix, key.name);
                }
            }
        }
        Command::Revoke { key } => {
            let keys = store.keys().await?;
            let matches: Vec<&ApiKey> =
                keys.iter().filter(|k| k.id.to_string() == key || k.prefix == key || k.name == key).collect();
            let target = match matches.as_slice() {
                [] => bail!("no key is named, prefixed or numbered {key:?}; see dgx-music keys list"),
                [one] => *one,
                several => bail!(
                    "{} keys match {key:?}; revoke one by its id: {}",
                    several.len(),
                    several.iter().map(|k| k.id.to_string()).collect::<Vec<_>>().join(", ")
                ),
            };
            if !store.revoke_key(target.id, chrono::Utc::now()).await? {
                bail!("the key {:?} ({}) was already revoked", target.name, target.prefix);
            }
            eprintln!("revoked key {:?} ({}); requests with it now get 401", target.name, target.prefix);
        }
    }
    Ok(ExitCode::SUCCESS)
}
