//! Writes a rendered tree into a directory, and removes what an older render of the same
//! site wrote that the site no longer needs. A manifest lists every path a render wrote;
//! nothing that is not in the old manifest is ever removed.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use super::{FileKind, MACHINES_DIR, RenderedFile, Tree};

/// Where the files go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// At the paths systemd reads them from, under an image root (`--root`).
    Root,
    /// A tree by kind (`--out`): units/, nspawn/, network/, sysctl.d/, appliance/,
    /// frr/, machines/, render/.
    Out,
}

/// Root-relative prefix → directory of the `--out` tree.
const OUT_DIRS: [(&str, &str); 8] = [
    ("etc/systemd/system", "units"),
    ("etc/systemd/nspawn", "nspawn"),
    ("etc/systemd/network", "network"),
    ("etc/sysctl.d", "sysctl.d"),
    ("etc/appliance", "appliance"),
    ("etc/frr", "frr"),
    ("var/lib/appliance/machines", "machines"),
    ("var/lib/appliance/render", "render"),
];

/// The manifest of a site's render (root-relative).
pub fn manifest_path(site: &str) -> PathBuf {
    PathBuf::from(format!("var/lib/appliance/render/{site}.manifest"))
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error(
        "the manifest {manifest} names {entry:?}, which is not a path a render writes; \
         nothing was removed (fix or delete the manifest)"
    )]
    BadManifest { manifest: String, entry: String },
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct WriteReport {
    /// Root-relative paths written (the manifest included).
    pub written: Vec<PathBuf>,
    /// Root-relative paths of an older render removed.
    pub removed: Vec<PathBuf>,
}

/// Where a root-relative path lands under `dir`.
pub fn place(dir: &Path, layout: Layout, rel: &Path) -> Option<PathBuf> {
    if !is_plain_relative(rel) {
        return None;
    }
    match layout {
        Layout::Root => Some(dir.join(rel)),
        Layout::Out => OUT_DIRS.iter().find_map(|(prefix, kind)| {
            rel.strip_prefix(prefix)
                .ok()
                .filter(|r| !r.as_os_str().is_empty())
                .map(|r| dir.join(kind).join(r))
        }),
    }
}

fn is_plain_relative(p: &Path) -> bool {
    !p.as_os_str().is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)))
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> WriteError {
    let path = path.display().to_string();
    move |source| WriteError::Io { op, path, source }
}

/// Writes `tree` for `site` under `dir`, then removes the files of the site's previous
/// render (its manifest) that `tree` no longer has, and records the new manifest. The old
/// manifest is read and checked before anything is written.
pub fn write(
    tree: &Tree,
    site: &str,
    dir: &Path,
    layout: Layout,
) -> Result<WriteReport, WriteError> {
    let manifest_rel = manifest_path(site);
    let manifest = place(dir, layout, &manifest_rel).expect("the manifest has a place");
    let old = read_manifest(&manifest, dir, layout)?;
    let mut report = WriteReport::default();
    for (rel, f) in tree {
        let path = place(dir, layout, rel).ok_or_else(|| WriteError::BadManifest {
            manifest: "(the render itself)".into(),
            entry: rel.display().to_string(),
        })?;
        put(&path, f)?;
        report.written.push(rel.clone());
    }
    let new: BTreeSet<&PathBuf> = tree.keys().collect();
    for rel in old.iter().filter(|r| !new.contains(r)) {
        let Some(path) = place(dir, layout, rel) else {
            continue;
        };
        match std::fs::symlink_metadata(&path) {
            Ok(m) if !m.is_dir() => {
                std::fs::remove_file(&path).map_err(io("removing", &path))?;
                report.removed.push(rel.clone());
                prune(&path, dir, layout);
            }
            _ => {}
        }
    }
    let mut text = format!(
        "# Written by appliance render: the files of site {site}. The next render of the \
         site removes those it no longer writes.\n"
    );
    for rel in tree.keys() {
        text.push_str(&format!("{}\n", rel.display()));
    }
    put(&manifest, &RenderedFile::text(text))?;
    report.written.push(manifest_rel);
    Ok(report)
}

fn read_manifest(manifest: &Path, dir: &Path, layout: Layout) -> Result<Vec<PathBuf>, WriteError> {
    let text = match std::fs::read_to_string(manifest) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(io("reading", manifest)(e)),
    };
    let mut out = vec![];
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let rel = PathBuf::from(line);
        if place(dir, layout, &rel).is_none() {
            return Err(WriteError::BadManifest {
                manifest: manifest.display().to_string(),
                entry: line.to_string(),
            });
        }
        out.push(rel);
    }
    Ok(out)
}

/// Writes one file or link whole: a reader sees the old version or the new one.
fn put(path: &Path, f: &RenderedFile) -> Result<(), WriteError> {
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io("creating directory", parent))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.appliance-tmp"));
    let _ = std::fs::remove_file(&tmp);
    match f.kind {
        FileKind::Regular { mode } => {
            std::fs::write(&tmp, &f.bytes).map_err(io("writing", &tmp))?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
                .map_err(io("setting the mode of", &tmp))?;
        }
        FileKind::Symlink => {
            std::os::unix::fs::symlink(f.as_str(), &tmp).map_err(io("linking", &tmp))?;
        }
    }
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io("replacing", path)(std::io::Error::other(
            "a directory is in the way",
        )));
    }
    std::fs::rename(&tmp, path).map_err(io("renaming into place", path))
}

/// Removes the directories a removed file leaves empty, where they are the render's own:
/// a machine's tree and a unit's `.d` drop-in directory.
fn prune(removed: &Path, dir: &Path, layout: Layout) {
    let machines = place(dir, layout, Path::new(MACHINES_DIR).join("x").as_path())
        .and_then(|p| p.parent().map(Path::to_path_buf));
    let mut cur = removed.parent();
    while let Some(d) = cur {
        let ours = machines
            .as_deref()
            .is_some_and(|m| d.starts_with(m) && d != m)
            || d.extension().is_some_and(|e| e == "d")
                && d.file_name()
                    .is_some_and(|n| n.to_string_lossy().contains(".service"));
        if !ours || std::fs::remove_dir(d).is_err() {
            return;
        }
        cur = d.parent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever a manifest line says, its place is under the target directory or none:
        /// a render never removes anything outside it.
        #[test]
        fn a_manifest_entry_never_points_outside(line in "[a-z./\\\\ -]{0,40}") {
            let dir = Path::new("/target");
            for layout in [Layout::Root, Layout::Out] {
                if let Some(p) = place(dir, layout, Path::new(&line)) {
                    prop_assert!(p.starts_with(dir));
                    prop_assert!(p.components().all(|c| !matches!(c, Component::ParentDir)));
                    prop_assert!(p != dir);
                }
            }
        }
    }

    #[test]
    fn out_layout_sorts_by_kind() {
        let d = Path::new("/o");
        assert_eq!(
            place(d, Layout::Out, Path::new("etc/systemd/system/a.service")),
            Some(PathBuf::from("/o/units/a.service"))
        );
        assert_eq!(place(d, Layout::Out, Path::new("etc/passwd")), None);
        assert_eq!(place(d, Layout::Root, Path::new("../x")), None);
        assert_eq!(place(d, Layout::Root, Path::new("/etc/x")), None);
    }
}
