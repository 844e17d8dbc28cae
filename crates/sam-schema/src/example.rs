//! The example model: what one training example is.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::hash::{ContentHash, Hasher};

/// Who speaks a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The system prompt.
    System,
    /// The user.
    User,
    /// The assistant (the turns a model is trained to produce).
    Assistant,
}

impl Role {
    /// The role's name as chat templates spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Message {
    /// Who speaks.
    pub role: Role,
    /// What is said.
    pub content: String,
}

impl Message {
    /// A message from `role`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self { role, content: content.into() }
    }
    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }
    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }
    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }
}

/// The prompt of a preference pair: plain text (one user turn) or a list of
/// messages (a conversation that the responses continue).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// A single user turn.
    Text(String),
    /// A conversation; the responses are the next assistant turn.
    Messages(Vec<Message>),
}

impl Prompt {
    /// The prompt as a message list (text becomes one user message).
    pub fn to_messages(&self) -> Vec<Message> {
        match self {
            Prompt::Text(t) => vec![Message::user(t.clone())],
            Prompt::Messages(m) => m.clone(),
        }
    }
}

/// The kind of an example, without its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `{"instruction","input","output"}`.
    Instruction,
    /// `{"messages":[…]}`.
    Chat,
    /// `{"prompt","chosen","rejected"}`.
    Preference,
    /// `{"text"}`.
    Completion,
    /// mlx-lm's `{"prompt","completion"}`.
    PromptCompletion,
}

impl Kind {
    /// All kinds.
    pub const ALL: [Kind; 5] =
        [Kind::Instruction, Kind::Chat, Kind::Preference, Kind::Completion, Kind::PromptCompletion];

    /// The kind's name (`instruction`, `chat`, `preference`, `completion`, `prompt_completion`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Instruction => "instruction",
            Kind::Chat => "chat",
            Kind::Preference => "preference",
            Kind::Completion => "completion",
            Kind::PromptCompletion => "prompt_completion",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s || (s == "dpo" && *k == Kind::Preference)).ok_or_else(|| {
            format!("unknown kind {s:?}: expected one of instruction, chat, preference, completion, prompt_completion")
        })
    }
}

/// What an example says: one of the four forms of the seed plus mlx-lm's
/// prompt/completion.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Content {
    /// An instruction, optional input, and the expected output.
    Instruction {
        /// What to do.
        instruction: String,
        /// What to do it on (may be empty).
        #[serde(default)]
        input: String,
        /// The answer.
        output: String,
    },
    /// A conversation.
    Chat {
        /// The turns, in order.
        messages: Vec<Message>,
    },
    /// A preference pair: for this prompt, `chosen` is better than `rejected`.
    Preference {
        /// The prompt.
        prompt: Prompt,
        /// The better response.
        chosen: String,
        /// The worse response.
        rejected: String,
    },
    /// Raw text (continued pre-training style).
    Completion {
        /// The text.
        text: String,
    },
    /// mlx-lm's prompt/completion form.
    PromptCompletion {
        /// The prompt (one user turn).
        prompt: String,
        /// The completion (the assistant's answer).
        completion: String,
    },
}

impl Content {
    /// This content's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Content::Instruction { .. } => Kind::Instruction,
            Content::Chat { .. } => Kind::Chat,
            Content::Preference { .. } => Kind::Preference,
            Content::Completion { .. } => Kind::Completion,
            Content::PromptCompletion { .. } => Kind::PromptCompletion,
        }
    }

    /// The text fields, in a fixed order, each tagged with a field name.
    /// Hashing, validation and redaction walk content through this.
    pub fn fields(&self) -> Vec<(&'static str, &str)> {
        match self {
            Content::Instruction { instruction, input, output } => {
                vec![("instruction", instruction), ("input", input), ("output", output)]
            }
            Content::Chat { messages } => messages.iter().map(|m| (m.role.as_str(), m.content.as_str())).collect(),
            Content::Preference { prompt, chosen, rejected } => {
                let mut v: Vec<(&'static str, &str)> = match prompt {
                    Prompt::Text(t) => vec![("prompt", t.as_str())],
                    Prompt::Messages(ms) => ms.iter().map(|m| (m.role.as_str(), m.content.as_str())).collect(),
                };
                v.push(("chosen", chosen));
                v.push(("rejected", rejected));
                v
            }
            Content::Completion { text } => vec![("text", text)],
            Content::PromptCompletion { prompt, completion } => {
                vec![("prompt", prompt), ("completion", completion)]
            }
        }
    }

    /// Apply `f` to every text field in place (redaction uses this).
    pub fn map_text(&mut self, mut f: impl FnMut(&str) -> String) {
        let mut set = |s: &mut String| *s = f(s);
        match self {
            Content::Instruction { instruction, input, output } => {
                set(instruction);
                set(input);
                set(output);
            }
            Content::Chat { messages } => messages.iter_mut().for_each(|m| set(&mut m.content)),
            Content::Preference { prompt, chosen, rejected } => {
                match prompt {
                    Prompt::Text(t) => set(t),
                    Prompt::Messages(ms) => ms.iter_mut().for_each(|m| set(&mut m.content)),
                }
                set(chosen);
                set(rejected);
            }
            Content::Completion { text } => set(text),
            Content::PromptCompletion { prompt, completion } => {
                set(prompt);
                set(completion);
            }
        }
    }

    /// The prompt side as text fields: what the model is given rather than
    /// what it must produce. Empty for completions, which have no prompt.
    pub fn input_fields(&self) -> Vec<(&'static str, &str)> {
        match self {
            Content::Instruction { instruction, input, .. } => vec![("instruction", instruction), ("input", input)],
            Content::Chat { messages } => {
                // Everything before the last assistant turn.
                let end = messages.iter().rposition(|m| m.role == Role::Assistant).unwrap_or(messages.len());
                messages[..end].iter().map(|m| (m.role.as_str(), m.content.as_str())).collect()
            }
            Content::Preference { prompt, .. } => match prompt {
                Prompt::Text(t) => vec![("prompt", t.as_str())],
                Prompt::Messages(ms) => ms.iter().map(|m| (m.role.as_str(), m.content.as_str())).collect(),
            },
            Content::Completion { .. } => Vec::new(),
            Content::PromptCompletion { prompt, .. } => vec![("prompt", prompt)],
        }
    }

    /// The response side: the text(s) a model is trained to produce.
    pub fn output_texts(&self) -> Vec<&str> {
        match self {
            Content::Instruction { output, .. } => vec![output],
            Content::Chat { messages } => {
                messages.iter().filter(|m| m.role == Role::Assistant).map(|m| m.content.as_str()).collect()
            }
            Content::Preference { chosen, rejected, .. } => vec![chosen, rejected],
            Content::Completion { text } => vec![text],
            Content::PromptCompletion { completion, .. } => vec![completion],
        }
    }

    /// Hash of the normalised content (kind and every field).
    pub fn content_hash(&self) -> ContentHash {
        let mut h = Hasher::new(self.kind().as_str());
        for (name, text) in self.fields() {
            h.field(name, text);
        }
        h.finish()
    }

    /// Hash of the normalised prompt side; `None` for completions. Two
    /// examples with the same input hash answer the same question.
    pub fn input_hash(&self) -> Option<ContentHash> {
        let fields = self.input_fields();
        if fields.is_empty() {
            return None;
        }
        // The kind is left out on purpose: an instruction and a chat asking
        // the same thing are the same input.
        let mut h = Hasher::new("input");
        // Empty fields (an instruction's empty `input`) are left out, so the
        // same question as an instruction, a chat or a prompt hashes alike.
        for (name, text) in fields.into_iter().filter(|(_, t)| !t.trim().is_empty()) {
            let name = if name == "instruction" || name == "prompt" { "user" } else { name };
            h.field(name, text);
        }
        Some(h.finish())
    }

    /// The content as a conversation (instruction and prompt/completion become
    /// user/assistant turns; a preference pair becomes its prompt followed by
    /// the chosen answer; a completion has none and gives `None`).
    pub fn to_messages(&self) -> Option<Vec<Message>> {
        match self {
            Content::Instruction { instruction, input, output } => {
                let user =
                    if input.trim().is_empty() { instruction.clone() } else { format!("{instruction}\n\n{input}") };
                Some(vec![Message::user(user), Message::assistant(output.clone())])
            }
            Content::Chat { messages } => Some(messages.clone()),
            Content::Preference { prompt, chosen, .. } => {
                let mut m = prompt.to_messages();
                m.push(Message::assistant(chosen.clone()));
                Some(m)
            }
            Content::Completion { .. } => None,
            Content::PromptCompletion { prompt, completion } => {
                Some(vec![Message::user(prompt.clone()), Message::assistant(completion.clone())])
            }
        }
    }
}

/// Quality tier, best first. Validation assigns it; new examples start
/// [`Tier::Unverified`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Passed every check with a high score.
    Gold,
    /// Passed, with minor issues.
    Silver,
    /// Usable but weak.
    Bronze,
    /// Not validated yet, or failed validation.
    #[default]
    Unverified,
}

impl Tier {
    /// All tiers, best first.
    pub const ALL: [Tier; 4] = [Tier::Gold, Tier::Silver, Tier::Bronze, Tier::Unverified];

    /// The tier's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Gold => "gold",
            Tier::Silver => "silver",
            Tier::Bronze => "bronze",
            Tier::Unverified => "unverified",
        }
    }

    /// The tier a quality score in `[0, 1]` earns: gold ≥ 0.8, silver ≥ 0.6,
    /// bronze ≥ 0.4, else unverified.
    pub fn from_score(score: f64) -> Tier {
        if score >= 0.8 {
            Tier::Gold
        } else if score >= 0.6 {
            Tier::Silver
        } else if score >= 0.4 {
            Tier::Bronze
        } else {
            Tier::Unverified
        }
    }

    /// Rank for comparisons where higher is better (gold 3 … unverified 0).
    pub fn rank(self) -> u8 {
        match self {
            Tier::Gold => 3,
            Tier::Silver => 2,
            Tier::Bronze => 1,
            Tier::Unverified => 0,
        }
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Tier {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Tier::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown tier {s:?}: expected gold, silver, bronze or unverified"))
    }
}

/// One training example: content plus where it came from and how good it is.
///
/// ```
/// use sam_schema::{Content, Example, Tier};
///
/// let ex = Example::new(Content::Instruction {
///     instruction: "Write the commit message for this change".into(),
///     input: "src/lib.rs | 2 +-".into(),
///     output: "Fix off-by-one in the tokenizer".into(),
/// })
/// .with_source("git")
/// .with_domain("git");
/// assert_eq!(ex.tier, Tier::Unverified);
/// // The id is derived from the content, so the same content has the same id.
/// assert_eq!(ex.id, ex.content.content_hash().short());
/// let line = ex.to_json_line();
/// assert_eq!(sam_schema::parse_line(&line).unwrap(), ex);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// Stable id: given by the input, else the short content hash.
    pub id: String,
    /// What the example says.
    #[serde(flatten)]
    pub content: Content,
    /// Where it came from (`git`, `code`, `docs`, `routing`, `escalation`, `file:…`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// Subject area (`code`, `git`, `docs`, `routing`, `general`, …).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    /// Quality score in `[0, 1]`, once scored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<f64>,
    /// Quality tier.
    #[serde(default)]
    pub tier: Tier,
    /// When it was created, in Unix seconds (0 when unknown).
    #[serde(default)]
    pub created_at: i64,
    /// Free metadata (the seed's fields that have no column of their own).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
}

impl Example {
    /// A new, unscored example whose id is its short content hash.
    pub fn new(content: Content) -> Self {
        let id = content.content_hash().short();
        Self {
            id,
            content,
            source: String::new(),
            domain: String::new(),
            quality: None,
            tier: Tier::Unverified,
            created_at: 0,
            metadata: Map::new(),
        }
    }

    /// Set the source.
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }

    /// Set the domain.
    pub fn with_domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = domain.into();
        self
    }

    /// Set the creation time (Unix seconds).
    pub fn with_created_at(mut self, secs: i64) -> Self {
        self.created_at = secs;
        self
    }

    /// Set one metadata key.
    pub fn with_meta(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// The example's kind.
    pub fn kind(&self) -> Kind {
        self.content.kind()
    }

    /// Hash of the normalised content.
    pub fn content_hash(&self) -> ContentHash {
        self.content.content_hash()
    }

    /// Hash of the normalised prompt side (`None` for completions).
    pub fn input_hash(&self) -> Option<ContentHash> {
        self.content.input_hash()
    }

    /// sam's full JSONL form: every field, one line, no trailing newline.
    /// [`crate::parse_line`] reads it back to an equal example.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("an Example always serialises")
    }

    /// The bare form that mlx-lm and TRL read: `messages`, `prompt`/`completion`,
    /// `text` or `prompt`/`chosen`/`rejected` (instructions become `messages`).
    pub fn to_training_value(&self) -> Value {
        match &self.content {
            Content::Instruction { .. } | Content::Chat { .. } => {
                let messages = self.content.to_messages().unwrap_or_default();
                serde_json::json!({ "messages": messages })
            }
            Content::Preference { prompt, chosen, rejected } => {
                serde_json::json!({ "prompt": prompt, "chosen": chosen, "rejected": rejected })
            }
            Content::Completion { text } => serde_json::json!({ "text": text }),
            Content::PromptCompletion { prompt, completion } => {
                serde_json::json!({ "prompt": prompt, "completion": completion })
            }
        }
    }
}
