//! Which paths name the same file: the files a run writes (report, journal) must never be the
//! operator's input or each other, whatever spelling (`./in.csv`, `in.csv`, a symlinked folder)
//! the command line used. Checked before anything is sent.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The path as the file system resolves it. A file that does not exist yet (a report about to
/// be written) is its canonical folder joined with its name; a folder that does not exist
/// either is left as given, made absolute.
pub fn canonical(path: &Path) -> PathBuf {
    if let Ok(found) = path.canonicalize() {
        return found;
    }
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    match (absolute.parent(), absolute.file_name()) {
        (Some(dir), Some(name)) => dir
            .canonicalize()
            .map(|dir| dir.join(name))
            .unwrap_or(absolute),
        _ => absolute,
    }
}

/// The journal and the files SQLite and the run lock keep beside it: `-wal`, `-shm`, `.lock`.
pub fn journal_files(journal: &Path) -> [PathBuf; 4] {
    let with = |suffix: &str| {
        let mut name: OsString = journal.file_name().map(OsString::from).unwrap_or_default();
        name.push(suffix);
        journal.with_file_name(name)
    };
    [
        journal.to_path_buf(),
        with("-wal"),
        with("-shm"),
        with(".lock"),
    ]
}

/// A file the run will write, with the words an operator knows it by (`the report (--report)`).
pub struct Output<'a> {
    pub what: &'a str,
    pub path: &'a Path,
}

/// Refuses outputs that would overwrite the input, the journal (or its companions) or one
/// another; `Err` says which two collide and what to do.
pub fn check_outputs(
    input: Option<&Path>,
    journal: Option<&Path>,
    outputs: &[Output<'_>],
) -> Result<(), String> {
    let mut taken: Vec<(String, PathBuf)> = Vec::new();
    if let Some(input) = input {
        taken.push(("the input file".into(), canonical(input)));
    }
    if let Some(journal) = journal {
        for (index, file) in journal_files(journal).iter().enumerate() {
            let what = match index {
                0 => "the journal (--state)".to_string(),
                _ => format!("the journal's companion file {}", file.display()),
            };
            taken.push((what, canonical(file)));
        }
    }
    for output in outputs {
        let path = canonical(output.path);
        if let Some((what, _)) = taken.iter().find(|(_, p)| *p == path) {
            return Err(format!(
                "{} {} is {what}: writing it would destroy that file; give {} a path of its own",
                output.what,
                output.path.display(),
                output.what
            ));
        }
        taken.push((format!("{} as well", output.what), path));
    }
    Ok(())
}

/// The folder a file goes in (a temporary file beside it, then a rename): its parent, or the
/// working directory for a bare file name, whose parent is the empty path.
pub fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Who may read a file written by [`write_atomically`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readers {
    /// The owner only (0600 on Unix): a refresh token.
    Owner,
    /// Everyone (0644 on Unix): a metrics file that node_exporter, another user, reads.
    Everyone,
}

/// Writes `content` to `path` through a temporary file in the same folder and a rename, so a
/// crash (or a reader at the wrong moment) never sees a half-written file.
pub fn write_atomically(path: &Path, content: &[u8], readers: Readers) -> std::io::Result<()> {
    use std::io::Write;
    let mut temp = tempfile::Builder::new()
        .prefix(".license-batch-")
        .tempfile_in(folder_of(path))?;
    // tempfile creates files readable by the owner only (0600) on Unix.
    #[cfg(unix)]
    if readers == Readers::Everyone {
        use std::os::unix::fs::PermissionsExt;
        temp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    }
    temp.write_all(content)?;
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_goes_in_its_folder_or_the_working_directory() {
        assert_eq!(folder_of(Path::new("bare.csv")), PathBuf::from("."));
        assert_eq!(
            folder_of(Path::new("nights/Łukasz.csv")),
            PathBuf::from("nights")
        );
        assert_eq!(
            folder_of(Path::new("/srv/日本語/token")),
            PathBuf::from("/srv/日本語")
        );
        assert_eq!(folder_of(Path::new("/token")), PathBuf::from("/"));
    }

    #[test]
    fn spellings_of_one_file_are_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.csv");
        std::fs::write(&input, "x").unwrap();
        let dotted = dir.path().join(".").join("in.csv");
        assert_eq!(canonical(&dotted), canonical(&input));
        let missing = dir.path().join("sub/../new.csv");
        assert_eq!(canonical(&missing).file_name().unwrap(), "new.csv");
    }

    #[test]
    fn outputs_on_the_input_or_the_journal_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("Émilie's sheet.csv");
        std::fs::write(&input, "x").unwrap();
        let journal = dir.path().join("state.sqlite");
        let check = |path: PathBuf| {
            check_outputs(
                Some(&input),
                Some(&journal),
                &[Output {
                    what: "the report (--report)",
                    path: &path,
                }],
            )
        };
        let refused = check(dir.path().join(".").join("Émilie's sheet.csv")).unwrap_err();
        assert!(refused.contains("is the input file"), "{refused}");
        for companion in [
            "state.sqlite",
            "state.sqlite-wal",
            "state.sqlite-shm",
            "state.sqlite.lock",
        ] {
            let refused = check(dir.path().join(companion)).unwrap_err();
            assert!(refused.contains("the journal"), "{companion}: {refused}");
        }
        assert!(check(dir.path().join("report.csv")).is_ok());
    }

    #[test]
    fn two_outputs_on_one_path_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let same = dir.path().join("out.csv");
        let refused = check_outputs(
            None,
            None,
            &[
                Output {
                    what: "the report (--report)",
                    path: &same,
                },
                Output {
                    what: "the summary (--summary-json)",
                    path: &same,
                },
            ],
        )
        .unwrap_err();
        assert!(
            refused.contains("the report (--report) as well"),
            "{refused}"
        );
    }
}
