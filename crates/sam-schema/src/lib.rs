//! The example types of sam, and the JSONL forms they are read from and
//! written to.
//!
//! An [`Example`] is one training example: its [`Content`] (one of the
//! [`Kind`]s — instruction, chat, preference, completion, or mlx-lm's
//! prompt/completion), where it came from (`source`), its subject (`domain`),
//! its quality (`quality` score and [`Tier`]), when it was made, and free
//! metadata.
//!
//! - [`parse_line`] / [`JsonlReader`] read every JSONL form sam accepts and
//!   detect which one a row is; a bad row yields a [`LineError`] that names
//!   the file, the line and the reason, and reading goes on.
//! - [`Example::to_json_line`] writes sam's full form, which reads back to an
//!   equal example; [`Example::to_training_value`] writes the bare form that
//!   mlx-lm and TRL read.
//! - [`Content::content_hash`] hashes the normalised content (exact
//!   duplicates); [`Content::input_hash`] hashes only the prompt side (the
//!   same question asked twice).
//! - [`quality::assess`] scores an example and gives the reasons.
//!
//! ```
//! use sam_schema::{parse_line, Kind, Tier};
//!
//! let ex = parse_line(r#"{"messages":[{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello!"}],"domain":"general"}"#)?;
//! assert_eq!(ex.kind(), Kind::Chat);
//! assert_eq!(ex.tier, Tier::Unverified);
//! // Whitespace does not change what an example teaches, nor its hash.
//! let same = parse_line(r#"{"messages":[{"role":"user","content":" Hi "},{"role":"assistant","content":"Hello!\n"}]}"#)?;
//! assert_eq!(ex.content_hash(), same.content_hash());
//! # Ok::<(), String>(())
//! ```
//!
//! This crate knows nothing about storage, tokenizers or models.
#![deny(missing_docs)]

mod example;
mod hash;
mod jsonl;
pub mod quality;

pub use example::{Content, Example, Kind, Message, Prompt, Role, Tier};
pub use hash::{ContentHash, normalize};
pub use jsonl::{JsonlError, JsonlReader, LineError, Parsed, parse_line, parse_object};

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Map, Value};

    fn text() -> impl Strategy<Value = String> {
        prop_oneof!["[a-zA-Z0-9 ,.!?\n\t]{0,40}", any::<String>().prop_map(|s| s.chars().take(40).collect()),]
    }

    fn nonempty_text() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9][a-zA-Z0-9 \n\"\\\\{}]{0,30}"
    }

    fn message() -> impl Strategy<Value = Message> {
        (prop_oneof![Just(Role::System), Just(Role::User), Just(Role::Assistant)], text())
            .prop_map(|(role, content)| Message { role, content })
    }

    fn content() -> impl Strategy<Value = Content> {
        prop_oneof![
            (text(), text(), text()).prop_map(|(instruction, input, output)| Content::Instruction {
                instruction,
                input,
                output
            }),
            prop::collection::vec(message(), 1..5).prop_map(|messages| Content::Chat { messages }),
            (
                prop_oneof![
                    text().prop_map(Prompt::Text),
                    prop::collection::vec(message(), 1..4).prop_map(Prompt::Messages)
                ],
                text(),
                text()
            )
                .prop_map(|(prompt, chosen, rejected)| Content::Preference { prompt, chosen, rejected }),
            text().prop_map(|text| Content::Completion { text }),
            (text(), text()).prop_map(|(prompt, completion)| Content::PromptCompletion { prompt, completion }),
        ]
    }

    fn example() -> impl Strategy<Value = Example> {
        (
            content(),
            prop::option::of(nonempty_text()),
            "[a-z]{0,8}",
            "[a-z]{0,8}",
            prop::option::of(0.0f64..=1.0),
            prop_oneof![Just(Tier::Gold), Just(Tier::Silver), Just(Tier::Bronze), Just(Tier::Unverified)],
            any::<i64>(),
            prop::collection::btree_map("[a-z]{1,6}", text(), 0..3),
        )
            .prop_map(|(content, id, source, domain, quality, tier, created_at, meta)| {
                let mut ex = Example::new(content);
                if let Some(id) = id {
                    ex.id = id;
                }
                ex.source = source;
                ex.domain = domain;
                ex.quality = quality;
                ex.tier = tier;
                ex.created_at = created_at;
                ex.metadata = meta.into_iter().map(|(k, v)| (k, Value::String(v))).collect::<Map<_, _>>();
                ex
            })
    }

    #[test]
    fn same_question_in_any_form_has_one_input_hash() {
        let q = "How do I list changed files?";
        let forms = [
            format!(r#"{{"instruction":"{q}","input":"","output":"a"}}"#),
            format!(r#"{{"instruction":"{q}","output":"b"}}"#),
            format!(r#"{{"messages":[{{"role":"user","content":"{q}"}},{{"role":"assistant","content":"c"}}]}}"#),
            format!(r#"{{"prompt":"{q}","completion":"d"}}"#),
            format!(r#"{{"prompt":"{q}","chosen":"e","rejected":"f"}}"#),
        ];
        let hashes: Vec<_> = forms.iter().map(|l| parse_line(l).unwrap().input_hash().unwrap()).collect();
        assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
        let other = parse_line(r#"{"instruction":"How do I list changed files?","input":"in HEAD~2","output":"x"}"#);
        assert_ne!(other.unwrap().input_hash().unwrap(), hashes[0]);
    }

    proptest! {
        #[test]
        fn full_form_round_trips(ex in example()) {
            let line = ex.to_json_line();
            prop_assert!(!line.contains('\n'));
            prop_assert_eq!(parse_line(&line).unwrap(), ex);
        }

        #[test]
        fn training_form_keeps_content(ex in example()) {
            // The bare form loses side fields but not what the example says:
            // reading it back gives the same content (instructions come back
            // as the equivalent chat).
            let back = parse_line(&ex.to_training_value().to_string()).unwrap();
            let want = match &ex.content {
                Content::Instruction { .. } => Content::Chat { messages: ex.content.to_messages().unwrap() },
                other => other.clone(),
            };
            prop_assert_eq!(back.content, want);
        }

        #[test]
        fn hashes_ignore_whitespace_only(c in content()) {
            let mut padded = c.clone();
            padded.map_text(|t| format!("  {t}\n"));
            prop_assert_eq!(padded.content_hash(), c.content_hash());
            prop_assert_eq!(padded.input_hash(), c.input_hash());
            let mut changed = c.clone();
            changed.map_text(|t| format!("{t} x"));
            prop_assert_ne!(changed.content_hash(), c.content_hash());
        }
    }
}
