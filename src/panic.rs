//! What a caught panic said: its payload as text, for the abort message that replaces it.

use std::any::Any;

/// The message a panic was raised with (`panic!("…")` gives a `&str` or a `String`).
pub fn message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "(no message)".to_string()
    }
}

/// The abort reason of a run whose `part` panicked: the message, and that nothing is lost.
pub fn abort_reason(part: &str, payload: &(dyn Any + Send)) -> String {
    format!(
        "internal error: {part} panicked ({}); this is a bug in license-batch, please report it. \
         Nothing is lost: unfinished rows are pending, and the same command resumes them",
        message(payload)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_of_a_panic_is_its_text() {
        let caught = std::panic::catch_unwind(|| panic!("bad {}", "É")).unwrap_err();
        assert_eq!(message(caught.as_ref()), "bad É");
        let caught = std::panic::catch_unwind(|| panic!("plain")).unwrap_err();
        assert_eq!(message(caught.as_ref()), "plain");
        let caught = std::panic::catch_unwind(|| std::panic::panic_any(7_u8)).unwrap_err();
        assert_eq!(message(caught.as_ref()), "(no message)");
    }
}
