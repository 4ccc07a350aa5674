//! The JDK and Debian's Tomcat jars, shared by the interop tests
//! (`tests/common/tribes.rs`) and the side-by-side benchmark
//! (`benches/side_by_side.rs`, which includes this file by path).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Tomcat Tribes from Debian's `libtomcat10-java`.
pub const TRIBES_JAR: &str = "/usr/share/java/tomcat10-tribes.jar";
/// Tomcat's logging (JULI), needed by Tribes.
pub const JULI_JAR: &str = "/usr/share/java/tomcat10-juli.jar";

/// A JDK tool (`java`, `javac`): `$JAVA_HOME/bin/NAME` if set, else from `PATH`.
pub fn jdk_tool(name: &str) -> PathBuf {
    if let Some(home) = std::env::var_os("JAVA_HOME") {
        let p = Path::new(&home).join("bin").join(name);
        if p.is_file() {
            return p;
        }
    }
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "`{name}` not found (JAVA_HOME or PATH): the Tomcat interop tests and the \
             side-by-side benchmark need a JDK 17 (scripts/setup.sh installs it)"
        )
    })
}

/// Compiles `src` against the Tribes jars into `out` (panics with javac's
/// output on failure).
pub fn javac(src: &Path, out: &Path) {
    let run = Command::new(jdk_tool("javac"))
        .arg("-nowarn")
        .arg("-d")
        .arg(out)
        .arg("-cp")
        .arg(format!("{TRIBES_JAR}:{JULI_JAR}"))
        .arg(src)
        .output()
        .expect("running javac");
    assert!(
        run.status.success(),
        "javac failed on {}:\n{}",
        src.display(),
        String::from_utf8_lossy(&run.stderr)
    );
}
