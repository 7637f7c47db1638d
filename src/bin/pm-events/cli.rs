//! What every command shares: printing to stdout (a closed pipe is not an
//! error) and the usage error (one line, exit code 2).

/// Prints a line to stdout, ignoring a closed pipe (`pm-events ... | head` is not an error).
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}
pub(crate) use say;

/// A usage problem: reported in one line, exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);
