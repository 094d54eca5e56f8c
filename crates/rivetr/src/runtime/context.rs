//! The build context as the Docker Engine API wants it: a tar of the
//! context directory, streamed to the engine while it is being written, so a
//! large context is never held in memory whole.
//!
//! Files matching the context's `.dockerignore` are left out, and `.git`
//! always is. Patterns are read the way Docker reads them: relative to the
//! context's root (a bare `foo` is `/foo`, not "any `foo`"), `**` for any
//! number of directories, `!` for exceptions. They are matched with the
//! `ignore` crate's gitignore matcher after anchoring each one at the
//! root, which gives the same answers for those forms. The Dockerfile and
//! `.dockerignore` are always sent, as Docker does.
//!
//! Entries are written in name order with no owners or times, so the same
//! tree gives the same tar (and the engine's layer cache hits).
//!
//! This does not talk to the engine and does not read Dockerfiles.

use std::fs;
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};

use bytes::Bytes;
use futures_util::Stream;
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Bytes per chunk handed to the engine's request body.
const CHUNK: usize = 64 * 1024;

/// Which paths of the context go into the tar.
pub(crate) struct ContextFilter {
    root: PathBuf,
    ignore: Gitignore,
    /// With exceptions (`!pattern`), an excluded directory may still hold
    /// files to send, so it must be walked.
    has_exceptions: bool,
    always: Vec<PathBuf>,
}

impl ContextFilter {
    pub(crate) fn new(root: &Path, dockerfile: &Path) -> io::Result<Self> {
        let mut builder = GitignoreBuilder::new(root);
        let mut has_exceptions = false;
        match fs::read_to_string(root.join(".dockerignore")) {
            Ok(text) => {
                for line in text.lines() {
                    let line = line.trim();
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    let (negate, pattern) = match line.strip_prefix('!') {
                        Some(rest) => (true, rest.trim()),
                        None => (false, line),
                    };
                    let pattern = pattern.trim_start_matches("./").trim_start_matches('/');
                    if pattern.is_empty() {
                        continue;
                    }
                    has_exceptions |= negate;
                    let anchored = format!("{}/{pattern}", if negate { "!" } else { "" });
                    builder.add_line(None, &anchored).map_err(|e| {
                        io::Error::new(io::ErrorKind::InvalidData, format!(".dockerignore: {e}"))
                    })?;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let ignore = builder.build().map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!(".dockerignore: {e}"))
        })?;
        Ok(ContextFilter {
            root: root.to_owned(),
            ignore,
            has_exceptions,
            always: vec![dockerfile.to_owned(), PathBuf::from(".dockerignore")],
        })
    }

    /// `rel` is relative to the context's root.
    pub(crate) fn excluded(&self, rel: &Path, is_dir: bool) -> bool {
        if rel.components().next() == Some(Component::Normal(".git".as_ref())) {
            return true;
        }
        if self.always.iter().any(|p| p == rel) {
            return false;
        }
        self.ignore
            .matched_path_or_any_parents(self.root.join(rel), is_dir)
            .is_ignore()
    }
}

/// A `dockerfile` path the context can hold: relative, no `..`.
pub(crate) fn check_dockerfile_path(dockerfile: &str) -> Result<PathBuf, String> {
    let path = Path::new(dockerfile);
    let ok = !dockerfile.is_empty()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if ok {
        Ok(path
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect())
    } else {
        Err(format!(
            "dockerfile {dockerfile:?} must be a path inside the context directory"
        ))
    }
}

/// Starts writing the tar of `root` on a blocking thread. The stream yields
/// its bytes; the handle tells, once the stream ended, whether the tar was
/// written whole (a file that could not be read is reported there).
pub(crate) fn tar_stream(
    root: PathBuf,
    dockerfile: PathBuf,
) -> (
    impl Stream<Item = io::Result<Bytes>> + Send + 'static,
    JoinHandle<io::Result<()>>,
) {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(4);
    let task = tokio::task::spawn_blocking(move || {
        let result = write_tar(&root, &dockerfile, tx.clone());
        if let Err(e) = &result {
            // The engine must not take a cut-off tar for a whole one.
            let _ = tx.blocking_send(Err(io::Error::new(e.kind(), e.to_string())));
        }
        result
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let item = rx.recv().await?;
        Some((item, rx))
    });
    (stream, task)
}

fn write_tar(
    root: &Path,
    dockerfile: &Path,
    tx: mpsc::Sender<io::Result<Bytes>>,
) -> io::Result<()> {
    let filter = ContextFilter::new(root, dockerfile)?;
    let writer = ChunkWriter {
        tx,
        buf: Vec::with_capacity(CHUNK),
    };
    let mut builder = tar::Builder::new(writer);
    builder.mode(tar::HeaderMode::Deterministic);
    builder.follow_symlinks(false);
    append_dir(&mut builder, root, Path::new(""), &filter)?;
    let mut writer = builder.into_inner()?;
    writer.flush()
}

fn append_dir<W: Write>(
    builder: &mut tar::Builder<W>,
    root: &Path,
    rel_dir: &Path,
    filter: &ContextFilter,
) -> io::Result<()> {
    let dir = root.join(rel_dir);
    let mut entries = fs::read_dir(&dir)
        .map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", dir.display())))?
        .collect::<Result<Vec<_>, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let rel = rel_dir.join(entry.file_name());
        let file_type = entry.file_type()?;
        let excluded = filter.excluded(&rel, file_type.is_dir());
        if file_type.is_dir() {
            if excluded && !filter.has_exceptions {
                continue;
            }
            if !excluded {
                builder.append_dir(&rel, entry.path())?;
            }
            append_dir(builder, root, &rel, filter)?;
        } else if !excluded && (file_type.is_file() || file_type.is_symlink()) {
            builder
                .append_path_with_name(entry.path(), &rel)
                .map_err(|e| io::Error::new(e.kind(), format!("adding {}: {e}", rel.display())))?;
        }
        // Sockets, FIFOs and devices have no place in an image build.
    }
    Ok(())
}

/// Hands what the tar builder writes to the request body in chunks.
struct ChunkWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx.blocking_send(Ok(Bytes::from(chunk))).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the engine stopped reading the build context",
            )
        })
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn names_in(tar_bytes: &[u8]) -> Vec<String> {
        let mut archive = tar::Archive::new(tar_bytes);
        archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect()
    }

    #[tokio::test]
    async fn dockerignore_is_honoured_and_git_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for (path, body) in [
            ("Dockerfile", "FROM scratch\n"),
            (
                ".dockerignore",
                "# comment\n*.log\nbuild\n!build/keep.txt\n**/*.tmp\n",
            ),
            ("app.txt", "a"),
            ("debug.log", "x"),
            ("sub/debug.log", "kept: the pattern is anchored at the root"),
            ("sub/x.tmp", "x"),
            ("build/out.bin", "x"),
            ("build/keep.txt", "k"),
            (".git/HEAD", "x"),
        ] {
            let p = root.join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, body).unwrap();
        }
        let (stream, task) = tar_stream(root.to_owned(), PathBuf::from("Dockerfile"));
        let chunks: Vec<Bytes> = stream.map(|c| c.unwrap()).collect().await;
        task.await.unwrap().unwrap();
        let bytes: Vec<u8> = chunks.concat();
        let mut names = names_in(&bytes);
        names.sort();
        assert_eq!(
            names,
            [
                ".dockerignore",
                "Dockerfile",
                "app.txt",
                "build/keep.txt",
                "sub",
                "sub/debug.log"
            ]
        );
    }

    #[test]
    fn dockerfile_paths_stay_inside_the_context() {
        assert!(check_dockerfile_path("Dockerfile").is_ok());
        assert_eq!(
            check_dockerfile_path("./docker/Dockerfile.web").unwrap(),
            PathBuf::from("docker/Dockerfile.web")
        );
        assert!(check_dockerfile_path("../Dockerfile").is_err());
        assert!(check_dockerfile_path("/etc/passwd").is_err());
        assert!(check_dockerfile_path("").is_err());
    }
}
