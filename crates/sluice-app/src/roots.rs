//! Where a spec that arrives over the network may read and write.
//!
//! A spec names the only paths sluice reads and writes for it (its landing files, spool, sink
//! and quarantine tables). A spec from a file on the operator's machine may name any; a spec
//! sent to `sluice serve` may only name locations under the server's roots (`--root DIR` or an
//! object-store URL prefix, repeatable). [`Roots::check`] refuses anything else *before* the
//! spec is compiled, because compiling already reads (the first landing file, to infer
//! columns) and writes (the sink's folder).

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use sluice_engine::spec::SpecFile;
use sluice_store::{PipelineVersion, Store};

use crate::error::{AppError, During, Result};

/// The folders and object-store URL prefixes a spec sent over the API may name.
#[derive(Debug, Clone, PartialEq)]
pub struct Roots {
    /// Canonical folders.
    dirs: Vec<PathBuf>,
    /// URL prefixes, each ending in `/`.
    urls: Vec<String>,
}

impl Roots {
    /// Roots from the operator's list: existing folders (relative to the working directory) or
    /// object-store URL prefixes (`s3://bucket/tables/`). An empty list means the working
    /// directory.
    pub fn new(roots: &[String]) -> Result<Roots> {
        let mut out = Roots {
            dirs: Vec::new(),
            urls: Vec::new(),
        };
        let cwd = [".".to_string()];
        let roots = if roots.is_empty() { &cwd[..] } else { roots };
        for root in roots {
            if let Some(path) = root.strip_prefix("file://") {
                out.dirs.push(canonical_root(root, Path::new(path))?);
            } else if root.contains("://") {
                if has_dot_segments(root) {
                    return Err(AppError::User(format!(
                        "root {root:?} has `.` or `..` segments: give the prefix itself"
                    )));
                }
                let mut prefix = root.clone();
                if !prefix.ends_with('/') {
                    prefix.push('/');
                }
                out.urls.push(prefix);
            } else {
                out.dirs.push(canonical_root(root, Path::new(root))?);
            }
        }
        Ok(out)
    }

    /// The folder relative paths of a spec sent over the API resolve against by default: the
    /// first folder root.
    pub fn base(&self) -> Option<&Path> {
        self.dirs.first().map(PathBuf::as_path)
    }

    /// The roots as given to the log: folders and URL prefixes.
    pub fn describe(&self) -> String {
        self.dirs
            .iter()
            .map(|d| d.display().to_string())
            .chain(self.urls.iter().cloned())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `base` (a folder relative to [`Roots::base`], or absolute) if it lies under a root.
    pub fn resolve_base(&self, base: Option<&str>) -> Result<PathBuf> {
        let Some(first) = self.base() else {
            return Err(AppError::User(
                "this server has no folder root, so a spec sent to it cannot name local paths; start it with --root DIR".into(),
            ));
        };
        let Some(base) = base else {
            return Ok(first.to_path_buf());
        };
        let dir = self.local("base_dir", base, first)?;
        if !dir.is_dir() {
            return Err(AppError::User(format!(
                "base_dir {base:?} is not a folder under the server's roots"
            )));
        }
        Ok(dir)
    }

    /// Reads the spec file `path` (relative to [`Roots::base`], or absolute) if it lies under
    /// a root: its text and the folder it is in (what its relative paths resolve against).
    pub fn read_spec(&self, path: &str) -> Result<(String, PathBuf)> {
        let Some(first) = self.base() else {
            return Err(AppError::User(
                "this server has no folder root, so it cannot read a spec file; start it with --root DIR or send the spec's text".into(),
            ));
        };
        let file = self.local("path", path, first)?;
        if !file.is_file() {
            return Err(AppError::User(format!(
                "path {path:?} is not a spec file under the server's roots; give it relative to {}",
                first.display()
            )));
        }
        let text = std::fs::read_to_string(&file).map_err(|e| {
            AppError::User(format!("reading the spec {path:?}: {e}; is it UTF-8 text?"))
        })?;
        let dir = file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| first.to_path_buf());
        Ok((text, dir))
    }

    /// Refuses a spec naming any location outside the roots: its landing files, spool, sink
    /// and quarantine table (the default one too). Relative paths resolve against
    /// `file.base_dir()`.
    pub fn check(&self, file: &SpecFile) -> Result<()> {
        let base = file.base_dir();
        let spec = &file.spec;
        let sink = spec.sink.delta.trim_end_matches('/');
        let quarantine = spec
            .sink
            .quarantine
            .clone()
            .unwrap_or_else(|| format!("{sink}_quarantine"));
        let mut named = vec![
            ("source.files", spec.source.files.clone()),
            ("sink.delta", spec.sink.delta.clone()),
            ("sink.quarantine", quarantine),
        ];
        if let Some(spool) = &spec.source.spool {
            named.push(("source.spool", spool.clone()));
        }
        for (key, location) in named {
            if location.contains("://") && !location.starts_with("file://") {
                self.url(key, &location)?;
            } else {
                let path = location.strip_prefix("file://").unwrap_or(&location);
                self.local(key, path, &base)?;
            }
        }
        Ok(())
    }

    /// An object-store URL must start with a URL root and have no dot segments.
    fn url(&self, key: &str, location: &str) -> Result<()> {
        if !has_dot_segments(location) && self.urls.iter().any(|r| location.starts_with(r.as_str()))
        {
            return Ok(());
        }
        Err(outside(key, location))
    }

    /// A local path (a glob for `source.files`) resolved against `base`; returns it resolved.
    /// Its fixed part (before any wildcard) is resolved through symlinks as far as it exists.
    fn local(&self, key: &str, location: &str, base: &Path) -> Result<PathBuf> {
        let path = Path::new(location);
        if path.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(AppError::User(format!(
                "{key}: {location:?} has a `..` component; name paths under the server's roots without it"
            )));
        }
        let joined = base.join(path);
        let fixed: PathBuf = joined
            .components()
            .take_while(|c| {
                !c.as_os_str()
                    .to_string_lossy()
                    .contains(['*', '?', '[', '{'])
            })
            .collect();
        let resolved = resolve_existing(&fixed);
        if self.dirs.iter().any(|d| resolved.starts_with(d)) {
            Ok(resolved)
        } else {
            Err(outside(key, location))
        }
    }
}

fn outside(key: &str, location: &str) -> AppError {
    AppError::User(format!(
        "{key}: {location:?} is outside the server's roots; a spec sent over the API may only name \
         locations under them (see `sluice serve --root`)"
    ))
}

fn has_dot_segments(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    lower.split('/').any(|s| s == "." || s == "..") || lower.contains("%2e")
}

fn canonical_root(given: &str, path: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(path).map_err(|e| {
        AppError::User(format!(
            "root {given:?} is not an existing folder ({e}); create it or give another --root"
        ))
    })
}

/// `path` with its longest existing ancestor resolved through symlinks and the rest appended.
fn resolve_existing(path: &Path) -> PathBuf {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(canonical) = std::fs::canonicalize(&existing) {
            let mut out = canonical;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return out;
        }
        match (
            existing.file_name().map(|n| n.to_os_string()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            // Nothing of it exists, not even `/`: no root can contain it.
            _ => return path.to_path_buf(),
        }
    }
}

/// Compiles a spec sent over the network, confined to `roots`: `text` is the YAML, `base`
/// the folder its relative paths resolve against (see [`Roots::resolve_base`]).
pub async fn compile_confined(
    store: &Arc<dyn Store>,
    text: &str,
    base: Option<&str>,
    roots: &Roots,
) -> Result<sluice_engine::Pipeline> {
    let base = roots.resolve_base(base)?;
    // The spec has no file: errors name it as `<request>` in the base folder.
    let file = SpecFile::parse(&base.join("<request>"), text.to_string())
        .map_err(|e| AppError::User(e.to_string()))?;
    roots.check(&file)?;
    crate::compile::compile_spec(file, 0, Some(store)).await
}

/// Registers a spec sent over the network as a version of the pipeline `name` (which the spec
/// must name), confined to `roots`; not current: a deployment moves traffic to it. The same
/// spec again is the same version.
pub async fn register_confined(
    store: &Arc<dyn Store>,
    name: &str,
    text: &str,
    base: Option<&str>,
    roots: &Roots,
) -> Result<PipelineVersion> {
    let mut pipeline = compile_confined(store, text, base, roots).await?;
    if pipeline.name() != name {
        return Err(AppError::User(format!(
            "the spec is for pipeline {:?}, not {name:?}: send it to /api/v1/pipelines/{}/versions",
            pipeline.name(),
            pipeline.name()
        )));
    }
    crate::register::probe_sink(&pipeline, Path::new("<request>")).await?;
    let version = crate::register::register_version(store, &mut pipeline, false).await?;
    store
        .pipeline_version(name, version)
        .await
        .during("reading the registered version")?
        .ok_or_else(|| AppError::Internal(format!("{name}@{version} vanished after registering")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(files: &str, sink: &str, extra: &str) -> String {
        format!(
            "pipeline: p\nsource:\n  files: {files}\n  columns: {{id: int64}}\ntransform: SELECT id FROM input\nsink:\n  delta: {sink}\n{extra}"
        )
    }

    fn parsed(base: &Path, text: String) -> SpecFile {
        SpecFile::parse(&base.join("<request>"), text).expect("a valid spec")
    }

    #[test]
    fn specs_name_only_locations_under_the_roots() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("landing")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("elsewhere")).expect("mkdir");
        let roots = Roots::new(&[root.display().to_string(), "s3://bucket/tables".to_string()])
            .expect("roots");
        let base = roots.resolve_base(None).expect("base");
        let ok = |text: String| roots.check(&parsed(&base, text));
        assert!(ok(spec("landing/*.csv", "tables/out", "")).is_ok());
        assert!(ok(spec("landing/*.csv", "s3://bucket/tables/out", "")).is_ok());
        let outside = dir.path().join("elsewhere");
        for (files, sink, extra) in [
            ("../elsewhere/*.csv", "tables/out", ""),
            ("landing/*/../../../elsewhere/*.csv", "tables/out", ""),
            (&*format!("{}/*.csv", outside.display()), "tables/out", ""),
            ("/etc/*.csv", "tables/out", ""),
            ("landing/*.csv", "/tmp/out", ""),
            ("landing/*.csv", "s3://other/tables/out", ""),
            ("landing/*.csv", "s3://bucket/tables/../secrets", ""),
            ("landing/*.csv", "s3://bucket/tables/%2E%2E/secrets", ""),
            ("landing/*.csv", "s3://bucket/tablesX/out", ""),
            ("landing/*.csv", "tables/out", "  quarantine: /tmp/held\n"),
            (
                "landing/*.csv",
                &*format!("file://{}/x", outside.display()),
                "",
            ),
        ] {
            let e = ok(spec(files, sink, extra)).expect_err(&format!("{files} {sink} {extra}"));
            assert_eq!(e.kind(), sluice_core::ErrorKind::User);
            let text = e.message();
            assert!(text.contains("roots") || text.contains(".."), "{text}");
        }
        // the default quarantine table sits beside the sink: a sink at the root's own folder
        // would put it outside
        let at_root = spec("landing/*.csv", &root.display().to_string(), "");
        assert!(ok(at_root).is_err());
        // spool too
        let spooled = spec("landing/*.csv", "tables/out", "")
            .replace("  columns:", "  spool: /var/tmp/spool\n  columns:");
        assert!(ok(spooled).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_out_of_a_root_is_outside() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("secret")).expect("mkdir");
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("link")).expect("link");
        let roots = Roots::new(&[root.display().to_string()]).expect("roots");
        let base = roots.resolve_base(None).expect("base");
        let text = spec("link/*.csv", "tables/out", "");
        assert!(roots.check(&parsed(&base, text)).is_err());
        assert!(roots.resolve_base(Some("link")).is_err());
        assert!(roots.resolve_base(Some("../")).is_err());
    }

    #[test]
    fn roots_must_exist_and_urls_be_plain() {
        assert!(Roots::new(&["/no/such/folder/anywhere".into()]).is_err());
        assert!(Roots::new(&["s3://b/a/../c".into()]).is_err());
        let cwd = Roots::new(&[]).expect("the working directory");
        assert_eq!(
            cwd.base().map(Path::to_path_buf),
            std::fs::canonicalize(".").ok()
        );
        let only_urls = Roots::new(&["gs://b/t".into()]).expect("roots");
        assert!(only_urls.resolve_base(None).is_err());
    }
}
