//! A dataset folder in the forms Hugging Face TRL's trainers read as they
//! are: what `sam export --format trl` writes for a distributed trainer.
//!
//! ```text
//! DIR/sft/{train,valid,test}.jsonl   {"messages": [{"role", "content"}, …], "id", "domain"}
//! DIR/dpo/{train,valid,test}.jsonl   {"prompt": [messages], "chosen": [assistant message],
//!                                     "rejected": [assistant message], "id", "domain"}
//! DIR/text/{train,valid,test}.jsonl  {"text", "id", "domain"}   (raw completions, when any)
//! DIR/manifest.json                  [`TrlManifest`]
//! ```
//!
//! `sft/` is TRL's conversational language-modelling form (`SFTTrainer`
//! applies the tokenizer's chat template and, with `assistant_only_loss`,
//! trains on the assistant turns); `dpo/` its conversational preference form
//! (`DPOTrainer`). Each folder holds one form only, because `datasets` reads a
//! dataset's columns from its rows; `load_dataset("json", data_dir=DIR/sft)`
//! names the splits `train`, `validation` and `test` from the file names. A
//! split with no rows has no file.
//!
//! The split is sam's own ([`crate::split`]): a function of each example's
//! id, which every row carries. The folder is also an input sam reads
//! ([`crate::prepare::read_inputs`] keeps the ids), so `sam prep --from
//! DIR/sft --from DIR/dpo` makes a dataset whose test split is exactly the
//! rows TRL never trained on: the held-out data sam's gate judges the
//! adapter TRL writes with.
//!
//! ```
//! use sam_prep::prepare::Input;
//! use sam_prep::trl::{self, TrlConfig};
//! use sam_schema::{Content, Example};
//!
//! let ex = Example::new(Content::Instruction {
//!     instruction: "Name the largest file".into(),
//!     input: String::new(),
//!     output: "find . -type f -printf '%s %p\\n' | sort -nr | head -n 1".into(),
//! });
//! let dir = tempfile::tempdir()?;
//! let m = trl::write(&Input { examples: vec![ex], sources: vec![] }, &TrlConfig::default(), dir.path())?;
//! assert_eq!(m.sft.train + m.sft.valid + m.sft.test, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use sam_schema::{Content, Example, Message, Role};
use serde::Serialize;
use serde_json::{Value, json};

use crate::Error;
use crate::cache::Split;
use crate::prepare::{Input, SourceFile, SplitCounts, write_jsonl};
use crate::split::{SPLIT_RULE, SplitRatios};

/// The folders of a TRL export, one per row form.
pub const FORMS: [&str; 3] = ["sft", "dpo", "text"];

/// Options of a TRL export.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrlConfig {
    /// Split proportions: the same as the `sam prep` whose test split gates
    /// the adapter (default 90/5/5).
    pub split: SplitRatios,
    /// System prompt put first in every conversation that has none (as
    /// `sam prep --system` does).
    pub system_prompt: Option<String>,
}

/// `manifest.json` of a TRL export.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrlManifest {
    /// Format version of this manifest.
    pub version: u32,
    /// Always `"trl"`.
    pub format: String,
    /// When it was written (Unix seconds).
    pub created_at: u64,
    /// Input files (a store export, or JSONL files).
    pub sources: Vec<SourceFile>,
    /// The split proportions.
    pub split_ratios: SplitRatios,
    /// How a row's split follows from its id.
    pub split_rule: String,
    /// The system prompt put first in conversations that had none.
    pub system_prompt: Option<String>,
    /// Conversations (`sft/`) per split.
    pub sft: SplitCounts,
    /// Preference pairs (`dpo/`) per split.
    pub dpo: SplitCounts,
    /// Raw completions (`text/`) per split.
    pub text: SplitCounts,
    /// Left out: a conversation without an assistant turn, or empty text.
    pub dropped_no_response: usize,
    /// Left out: an id seen before in this input.
    pub duplicate_ids: usize,
    /// Input rows that did not parse.
    pub bad_rows: usize,
    /// The files written, relative to the folder (`manifest.json` last).
    pub files: Vec<String>,
}

/// Writes `input` into `dir` in TRL's forms (see the module's docs), after
/// removing what an earlier TRL export left there.
pub fn write(input: &Input, cfg: &TrlConfig, dir: &Path) -> Result<TrlManifest, Error> {
    fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    remove_previous_outputs(dir)?;
    let mut m = TrlManifest {
        version: 1,
        format: "trl".into(),
        created_at: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        sources: input.sources.clone(),
        split_ratios: cfg.split,
        split_rule: SPLIT_RULE.into(),
        system_prompt: cfg.system_prompt.clone(),
        sft: SplitCounts::default(),
        dpo: SplitCounts::default(),
        text: SplitCounts::default(),
        dropped_no_response: 0,
        duplicate_ids: 0,
        bad_rows: input.sources.iter().map(|s| s.bad_rows).sum(),
        files: Vec::new(),
    };
    // Rows by form and split: [form][split].
    let mut rows: [[Vec<Value>; 3]; 3] = Default::default();
    let mut seen = HashSet::new();
    for ex in &input.examples {
        if !seen.insert(ex.id.as_str()) {
            m.duplicate_ids += 1;
            continue;
        }
        let Some((form, row)) = row_of(ex, cfg.system_prompt.as_deref()) else {
            m.dropped_no_response += 1;
            continue;
        };
        let split = cfg.split.split_of(&ex.id);
        [&mut m.sft, &mut m.dpo, &mut m.text][form].add(split);
        rows[form][split as usize].push(row);
    }
    for (form, by_split) in FORMS.iter().zip(&rows) {
        for split in Split::ALL {
            m.files.extend(write_jsonl(dir, &format!("{form}/{split}.jsonl"), by_split[split as usize].iter())?);
        }
    }
    m.files.push("manifest.json".into());
    let text = serde_json::to_string_pretty(&m).expect("manifest serialises");
    let path = dir.join("manifest.json");
    sam_home::atomic::write(&path, (text + "\n").as_bytes()).map_err(|e| io_err(&path, e))?;
    Ok(m)
}

/// The row of one example and its form's index in [`FORMS`]; `None` when it
/// has nothing to train on.
fn row_of(ex: &Example, system: Option<&str>) -> Option<(usize, Value)> {
    let with_system = |mut msgs: Vec<Message>| {
        if let Some(sys) = system
            && msgs.first().is_none_or(|m| m.role != Role::System)
        {
            msgs.insert(0, Message::system(sys));
        }
        msgs
    };
    let (form, mut row) = match &ex.content {
        Content::Completion { text } if text.trim().is_empty() => return None,
        Content::Completion { text } => (2, json!({ "text": text })),
        Content::Preference { prompt, chosen, rejected } => (
            1,
            json!({
                "prompt": with_system(prompt.to_messages()),
                "chosen": [Message::assistant(chosen.clone())],
                "rejected": [Message::assistant(rejected.clone())],
            }),
        ),
        c => {
            let msgs = c.to_messages().filter(|m| m.iter().any(|m| m.role == Role::Assistant))?;
            (0, json!({ "messages": with_system(msgs) }))
        }
    };
    row["id"] = json!(ex.id);
    if !ex.domain.is_empty() {
        row["domain"] = json!(ex.domain);
    }
    Some((form, row))
}

fn remove_previous_outputs(dir: &Path) -> Result<(), Error> {
    let mut paths = vec![dir.join("manifest.json")];
    for form in FORMS {
        for split in Split::ALL {
            paths.push(dir.join(format!("{form}/{split}.jsonl")));
        }
    }
    for p in paths {
        if p.is_file() {
            fs::remove_file(&p).map_err(|e| io_err(&p, e))?;
        }
    }
    for form in FORMS {
        // Only when empty: anything else there is not ours.
        let _ = fs::remove_dir(dir.join(form));
    }
    Ok(())
}

fn io_err(path: &Path, e: std::io::Error) -> Error {
    Error::Io { path: path.to_path_buf(), source: e }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sam_schema::Prompt;

    #[test]
    fn rows_are_trl_forms_with_their_ids() {
        let chat = Example::new(Content::Chat { messages: vec![Message::user("Hi"), Message::assistant("Hello")] })
            .with_domain("general");
        let pair = Example::new(Content::Preference {
            prompt: Prompt::Text("2+2?".into()),
            chosen: "4".into(),
            rejected: "5".into(),
        });
        let (form, row) = row_of(&chat, Some("You are SAM.")).unwrap();
        assert_eq!(FORMS[form], "sft");
        assert_eq!(
            row,
            json!({"messages": [{"role": "system", "content": "You are SAM."}, {"role": "user", "content": "Hi"},
                                {"role": "assistant", "content": "Hello"}], "id": chat.id, "domain": "general"})
        );
        let (form, row) = row_of(&pair, None).unwrap();
        assert_eq!(FORMS[form], "dpo");
        assert_eq!(
            row,
            json!({"prompt": [{"role": "user", "content": "2+2?"}], "chosen": [{"role": "assistant", "content": "4"}],
                   "rejected": [{"role": "assistant", "content": "5"}], "id": pair.id})
        );
        let no_answer = Example::new(Content::Chat { messages: vec![Message::user("Hi")] });
        assert!(row_of(&no_answer, None).is_none());
        assert!(row_of(&Example::new(Content::Completion { text: " ".into() }), None).is_none());
    }
}
