//! Errors of the command-line tool: user errors (exit status 1) versus internal errors
//! (exit status 2), and their one-line rendering.

use realm_db::StorageError;

/// Exit status for a user error.
pub const EXIT_USER: u8 = 1;
/// Exit status for an internal error.
pub const EXIT_INTERNAL: u8 = 2;

/// An error the user can fix: bad arguments, a missing database, a bad input file.
#[derive(Debug)]
pub struct UserError(pub String);

impl std::fmt::Display for UserError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UserError {}

/// A user error with this message.
pub fn user(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UserError(message.into()))
}

/// The exit status for an error: the first cause that knows its kind decides. Errors of the
/// library crates say themselves whether they are the user's to fix
/// (`is_user_error`, which wrapping errors delegate to the error they wrap).
pub fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(user) = is_user_error(cause) {
            return if user { EXIT_USER } else { EXIT_INTERNAL };
        }
    }
    EXIT_INTERNAL
}

/// Whether one cause is the user's to fix, if it is an error that knows.
fn is_user_error(cause: &(dyn std::error::Error + 'static)) -> Option<bool> {
    if cause.is::<UserError>() || cause.is::<clap::Error>() {
        return Some(true);
    }
    if let Some(e) = cause.downcast_ref::<StorageError>() {
        return Some(e.is_user_error());
    }
    if let Some(e) = cause.downcast_ref::<realm_db::Error>() {
        return Some(e.is_user_error());
    }
    if let Some(e) = cause.downcast_ref::<realm_db::reader::Error>() {
        return Some(e.is_user_error());
    }
    if let Some(e) = cause.downcast_ref::<realm_db::trainer::Error>() {
        return Some(e.is_user_error());
    }
    None
}

/// Whether the error is a closed standard output (the reader of a pipe went away).
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    let broken = Some(std::io::ErrorKind::BrokenPipe);
    err.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().map(|e| e.kind()) == broken
            // serde_json reports the io error's kind but not the io error as its source.
            || cause
                .downcast_ref::<serde_json::Error>()
                .and_then(serde_json::Error::io_error_kind)
                == broken
    })
}

/// The error as one line: each cause once (errors that embed their source's message are not
/// repeated), wrapper-only layers skipped.
pub fn render(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        if matches!(
            cause.downcast_ref::<realm_db::Error>(),
            Some(realm_db::Error::Storage(_))
        ) {
            continue;
        }
        let message = cause
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        if message.is_empty() || parts.iter().any(|p| p.contains(&message)) {
            continue;
        }
        parts.push(message);
    }
    let mut line = parts.join(": ");
    if !line.ends_with(['.', '!', '?']) {
        line.push('.');
    }
    line
}

/// A clap parse error as one line (its usage block dropped).
pub fn render_clap(err: &clap::Error) -> String {
    let text = err.render().to_string();
    let mut line = text
        .lines()
        .take_while(|l| !l.starts_with("Usage:"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if let Some(rest) = line.strip_prefix("error: ") {
        line = rest.to_string();
    }
    if !line.ends_with(['.', '!', '?']) {
        line.push('.');
    }
    format!("{line} Run `realm-db --help` for usage.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_errors_are_classified() {
        let locked = anyhow::Error::new(StorageError::Locked { path: "/x".into() });
        assert_eq!(exit_code(&locked), EXIT_USER);
        let corrupt = anyhow::Error::new(StorageError::Corrupt {
            what: "passage 1".into(),
        });
        assert_eq!(exit_code(&corrupt), EXIT_INTERNAL);
        let wrapped =
            anyhow::Error::new(realm_db::Error::Storage(StorageError::UnknownGeneration(3)));
        assert_eq!(exit_code(&wrapped), EXIT_USER);
        assert_eq!(exit_code(&user("bad")), EXIT_USER);
        assert_eq!(exit_code(&anyhow::anyhow!("boom")), EXIT_INTERNAL);
    }

    /// One user and one internal error of each library crate, each wrapped as the CLI sees
    /// it (with context), and whether it is the user's.
    fn wrapped_errors() -> Vec<(anyhow::Error, bool)> {
        use realm_db::{reader, trainer};
        let storage_user = || StorageError::UnknownGeneration(3);
        let storage_internal = || StorageError::Corrupt {
            what: "passage 1".into(),
        };
        let retriever_user = realm_db::Error::InvalidInput {
            reason: "the batch is empty".into(),
        };
        let retriever_internal = realm_db::Error::Checkpoint {
            reason: "it is truncated".into(),
        };
        let cases = vec![
            (anyhow::Error::new(storage_user()), true),
            (anyhow::Error::new(storage_internal()), false),
            (
                anyhow::Error::new(realm_db::Error::Storage(storage_user())),
                true,
            ),
            (
                anyhow::Error::new(realm_db::Error::Storage(storage_internal())),
                false,
            ),
            (anyhow::Error::new(retriever_user), true),
            (anyhow::Error::new(retriever_internal), false),
            (anyhow::Error::new(reader::Error::NoPassages), true),
            (
                anyhow::Error::new(reader::Error::Checkpoint {
                    reason: "it is truncated".into(),
                }),
                false,
            ),
            (
                anyhow::Error::new(reader::Error::Retriever(realm_db::Error::Storage(
                    storage_user(),
                ))),
                true,
            ),
            (anyhow::Error::new(trainer::Error::NoGeneration), true),
            (anyhow::Error::new(trainer::Error::BuilderPanicked), false),
            (
                anyhow::Error::new(trainer::Error::Storage(storage_internal())),
                false,
            ),
            (
                anyhow::Error::new(trainer::Error::Reader(reader::Error::InvalidInput {
                    reason: "the question is empty".into(),
                })),
                true,
            ),
        ];
        cases
            .into_iter()
            .map(|(e, user)| (e.context("running the command failed"), user))
            .collect()
    }

    #[test]
    fn exit_codes_follow_each_crates_error_kind() {
        for (err, user) in wrapped_errors() {
            let expected = if user { EXIT_USER } else { EXIT_INTERNAL };
            assert_eq!(exit_code(&err), expected, "{err:#}");
        }
    }

    #[test]
    fn render_does_not_repeat_embedded_sources() {
        let wrapped =
            anyhow::Error::new(realm_db::Error::Storage(StorageError::UnknownGeneration(3)))
                .context("cannot pin generation 3");
        assert_eq!(
            render(&wrapped),
            "cannot pin generation 3: no generation has id 3; it never existed or was garbage-collected."
        );
    }
}
