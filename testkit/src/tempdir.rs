//! A temporary directory that is removed, with everything in it, when its
//! handle is dropped: the data of a private broker, an SMTP server's
//! captured mail.

use std::path::{Path, PathBuf};

/// `$TMPDIR/lifeline-<label>-<random>`, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `$TMPDIR/lifeline-<label>-<random>`.
    pub fn new(label: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "lifeline-{label}-{}",
            lifeline_shared::token::new_id()
        ));
        std::fs::create_dir_all(&p).expect("temp dir");
        Self(p)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temp_dir_is_fresh_and_gone_after_drop() {
        let (a, b) = (TempDir::new("kit"), TempDir::new("kit"));
        assert_ne!(a.path(), b.path());
        std::fs::write(a.path().join("f"), "x").unwrap();
        let path = a.path().to_owned();
        drop(a);
        assert!(!path.exists());
    }
}
