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

/// Whether a storage error is the user's to fix.
fn storage_is_user(e: &StorageError) -> bool {
    matches!(
        e,
        StorageError::NotFound { .. }
            | StorageError::AlreadyExists { .. }
            | StorageError::NotARealmDb { .. }
            | StorageError::UnsupportedFormat { .. }
            | StorageError::Locked { .. }
            | StorageError::UnknownGeneration(_)
            | StorageError::UnknownPassage(_)
            | StorageError::InvalidPassage { .. }
            | StorageError::ReadOnly { .. }
            | StorageError::NotPinnable { .. }
            | StorageError::NoCurrentGeneration
            // Concurrent writers moved the current generation: retrying is the fix.
            | StorageError::GenerationChanged { .. }
            // A follower of a database whose lexical index the writer has not built yet.
            | StorageError::LexicalIndexUnavailable { .. }
            | StorageError::InvalidBm25Params { .. }
    )
    // Rocks, Io, Corrupt, InvalidSpec, DimensionMismatch, NonFinite, NotWritable,
    // DuplicateVector, CoverageGap and UnknownBlob (a missing stored encoder) are internal.
}

/// Whether a retriever error is the user's to fix; `None` defers to its source.
fn retriever_is_user(e: &realm_db::Error) -> Option<bool> {
    match e {
        realm_db::Error::Storage(_) => None,
        realm_db::Error::ModelFile { .. }
        | realm_db::Error::InvalidInput { .. }
        | realm_db::Error::NoEncoder { .. }
        | realm_db::Error::Busy { .. }
        | realm_db::Error::QaFile { .. }
        | realm_db::Error::QaLine { .. }
        | realm_db::Error::AnswerPattern { .. } => Some(true),
        // Io (of the tool's own files), Tokenizer, Checkpoint (of a stored encoder) and Torch.
        _ => Some(false),
    }
}

/// Whether a trainer error is the user's to fix; `None` defers to its source.
fn trainer_is_user(e: &realm_db::trainer::Error) -> Option<bool> {
    use realm_db::trainer::Error as T;
    match e {
        T::Retriever(_) | T::Storage(_) | T::Reader(_) => None,
        T::Config { .. }
        | T::UnknownMode { .. }
        | T::UnknownReader { .. }
        | T::NoPositives { .. }
        | T::NoData { .. } => Some(true),
        // Torch, CorruptState (a damaged trainer state blob) and what comes later.
        _ => Some(false),
    }
}

/// The exit status for an error.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.is::<UserError>() {
            return EXIT_USER;
        }
        if let Some(e) = cause.downcast_ref::<StorageError>() {
            return if storage_is_user(e) {
                EXIT_USER
            } else {
                EXIT_INTERNAL
            };
        }
        if let Some(e) = cause.downcast_ref::<realm_db::Error>() {
            match retriever_is_user(e) {
                Some(true) => return EXIT_USER,
                Some(false) => return EXIT_INTERNAL,
                None => {}
            }
        }
        if let Some(e) = cause.downcast_ref::<realm_db::trainer::Error>() {
            match trainer_is_user(e) {
                Some(true) => return EXIT_USER,
                Some(false) => return EXIT_INTERNAL,
                None => {}
            }
        }
        if let Some(e) = cause.downcast_ref::<realm_db::reader::Error>()
            && matches!(
                e,
                realm_db::reader::Error::InvalidInput { .. } | realm_db::reader::Error::NoPassages
            )
        {
            return EXIT_USER;
        }
        if cause.is::<clap::Error>() {
            return EXIT_USER;
        }
    }
    EXIT_INTERNAL
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
