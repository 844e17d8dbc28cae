//! From messages to token ids and loss masks.
//!
//! A conversation is rendered with the chat template and tokenised once; the
//! loss mask comes from byte spans of the text, a token being trained on when
//! any of its bytes falls in one (transformers' rule for
//! `return_assistant_tokens_mask`). The spans are found in one of two ways:
//!
//! - **Generation markers.** A template that wraps assistant output in
//!   `{% generation %}` blocks says itself what is trained on: the spans are
//!   the blocks' output ([`ChatTemplate::render_with_generation_spans`]), the
//!   mask is transformers' assistant mask, and nothing is rendered twice.
//! - **Inferred**, for templates without markers (most models' own). For each
//!   assistant turn `i` the conversation before it is rendered with the
//!   generation prompt; where that rendering is a prefix of the whole text,
//!   the turn starts where it ends, which is where a model asked for a reply
//!   starts writing. Templates that render earlier turns differently once
//!   later ones follow (Mistral moves the system message to the last user
//!   turn; DeepSeek's generation prompt opens a `<think>` the finished turn
//!   lacks) fail that test for some turns: those are found from the text
//!   instead, at the turn's content after the message before it, or where
//!   the prompt rendering and the whole part, and are counted
//!   ([`AssistantSpans::by_content`]). A turn ends after the first stop token
//!   (end of turn, end of sequence) following its content, before the next
//!   message; with none there, where its content ends.
//!
//! A turn that cannot be found either way is an [`Error::Unmaskable`] with
//! the reason, never a silently empty mask. Rendering costs one pass with
//! markers and one more per assistant turn without.

use sam_schema::{Message, Role};
use tokenizers::Tokenizer;

use crate::Error;
use crate::fast_bpe::FastBpe;
use crate::template::ChatTemplate;

/// Byte offsets of tokens in the text they come from.
pub type Offsets = Vec<(usize, usize)>;

/// A tokenised sequence with its loss mask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Token ids.
    pub ids: Vec<u32>,
    /// `true` where the token is trained on.
    pub mask: Vec<bool>,
    /// Index of the first token of the last assistant turn (the response);
    /// `ids.len()` when there is none.
    pub response_start: usize,
    /// Assistant turns found by their content rather than by the prefix
    /// rendering (always 0 with generation markers).
    pub by_content: usize,
}

/// A tokenised preference pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedPair {
    /// The prompt, ending with the generation prompt.
    pub prompt: Vec<u32>,
    /// The chosen response, ending with the end-of-turn token.
    pub chosen: Vec<u32>,
    /// The rejected response, ending with the end-of-turn token.
    pub rejected: Vec<u32>,
    /// Responses found by their content rather than by the prefix rendering.
    pub by_content: usize,
}

/// Where the assistant turns of one rendering are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AssistantSpans {
    /// Byte spans of the text that are trained on, in order, not touching.
    pub spans: Vec<(usize, usize)>,
    /// Turns found by their content (see the module docs).
    pub by_content: usize,
}

/// Renders with a template and tokenises with a tokenizer.
#[derive(Debug)]
pub struct Encoder<'a> {
    template: &'a ChatTemplate,
    tokenizer: &'a Tokenizer,
    fast: Option<&'a FastBpe<'a>>,
    stops: Vec<String>,
}

impl<'a> Encoder<'a> {
    /// An encoder; `end_of_turn` is the text of the token that closes a turn
    /// (`None`: a turn ends where its content ends, unless
    /// [`Encoder::with_stop_texts`] names others).
    pub fn new(template: &'a ChatTemplate, tokenizer: &'a Tokenizer, end_of_turn: Option<String>) -> Self {
        Self { template, tokenizer, fast: None, stops: end_of_turn.into_iter().filter(|t| !t.is_empty()).collect() }
    }

    /// More texts that end an assistant turn (the model's end-of-sequence
    /// and other stop tokens), for templates without generation markers.
    pub fn with_stop_texts(mut self, texts: impl IntoIterator<Item = String>) -> Self {
        for t in texts {
            if !t.is_empty() && !self.stops.contains(&t) {
                self.stops.push(t);
            }
        }
        self
    }

    /// Tokenise through `fast` (built for the same tokenizer), which gives
    /// the same ids faster where it applies.
    pub fn with_fast(mut self, fast: &'a FastBpe<'a>) -> Self {
        self.fast = Some(fast);
        self
    }

    /// Tokenise text as transformers' `apply_chat_template(tokenize=True)`
    /// does: special tokens in the text are matched, none are added.
    pub fn tokenize(&self, text: &str) -> Result<(Vec<u32>, Offsets), Error> {
        if let Some(fast) = self.fast {
            return fast.encode(text);
        }
        let enc = self.tokenizer.encode(text, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    /// Render and tokenise a conversation, with its loss mask.
    pub fn encode_chat(&self, messages: &[Message]) -> Result<Encoded, Error> {
        let (text, found) = self.render_with_spans(messages)?;
        let (ids, offsets) = self.tokenize(&text)?;
        let mask = mask_from_spans(&offsets, &found.spans);
        let response_start = match found.spans.last() {
            Some(&(s, _)) => offsets.iter().position(|&(a, b)| b > s || a >= s).unwrap_or(ids.len()),
            None => ids.len(),
        };
        Ok(Encoded { ids, mask, response_start, by_content: found.by_content })
    }

    /// Render a conversation and locate its assistant turns: by the
    /// template's generation markers when it has them, else inferred.
    pub fn render_with_spans(&self, messages: &[Message]) -> Result<(String, AssistantSpans), Error> {
        let assistant_turns = messages.iter().filter(|m| m.role == Role::Assistant).count();
        if self.template.has_generation_markers() {
            let (text, spans) = self.template.render_with_generation_spans(messages, false)?;
            if spans.is_empty() && assistant_turns > 0 {
                return Err(Error::Unmaskable(
                    "the template's {% generation %} blocks cover no text of this conversation".into(),
                ));
            }
            return Ok((text, AssistantSpans { spans: merge_touching(spans), by_content: 0 }));
        }
        let text = self.template.render(messages, false)?;
        let found = self.assistant_spans(messages, &text)?;
        Ok((text, found))
    }

    /// Tokenise raw text (completion examples): every token is trained on.
    pub fn encode_text(&self, text: &str) -> Result<Encoded, Error> {
        let (ids, _) = self.tokenize(text)?;
        Ok(Encoded { mask: vec![true; ids.len()], response_start: 0, ids, by_content: 0 })
    }

    /// Tokenise a preference pair: the prompt rendered with the generation
    /// prompt, and each response as the tokens that follow it in the full
    /// rendering, through the end-of-turn token.
    pub fn encode_pair(&self, prompt: &[Message], chosen: &str, rejected: &str) -> Result<EncodedPair, Error> {
        let prompt_text = self.template.render(prompt, true)?;
        let (prompt_ids, _) = self.tokenize(&prompt_text)?;
        let mut by_content = 0;
        let mut response = |answer: &str| -> Result<Vec<u32>, Error> {
            let mut msgs = prompt.to_vec();
            msgs.push(Message::assistant(answer));
            let enc = self.encode_chat(&msgs)?;
            by_content += enc.by_content;
            // The response is the masked run after the prompt.
            let start = enc.response_start;
            let end = enc.mask[start..].iter().position(|m| !m).map_or(enc.ids.len(), |p| start + p);
            Ok(enc.ids[start..end].to_vec())
        };
        let chosen = response(chosen)?;
        let rejected = response(rejected)?;
        Ok(EncodedPair { chosen, rejected, prompt: prompt_ids, by_content })
    }

    /// Byte spans of `text` (the rendering of `messages`) that belong to
    /// assistant turns, inferred without generation markers (see the module
    /// docs).
    pub fn assistant_spans(&self, messages: &[Message], text: &str) -> Result<AssistantSpans, Error> {
        let turns: Vec<usize> = (0..messages.len()).filter(|&i| messages[i].role == Role::Assistant).collect();
        // For each turn: how far the rendering of the conversation before it
        // (with the generation prompt) agrees with the whole, and whether it
        // agrees all the way.
        let prompts: Vec<(usize, bool)> = turns
            .iter()
            .map(|&i| match self.template.render(&messages[..i], true) {
                Ok(p) => {
                    let n = common_prefix(&p, text);
                    (n, n == p.len())
                }
                Err(_) => (0, false),
            })
            .collect();
        let mut found = AssistantSpans::default();
        let mut cursor = 0;
        for (k, &i) in turns.iter().enumerate() {
            // The next turn's start, where its prompt is a prefix; this turn
            // ends before it.
            let limit = match prompts.get(k + 1) {
                Some(&(n, true)) if n >= cursor => n,
                _ => text.len(),
            };
            let content = messages[i].content.as_str();
            let (agree, whole) = prompts[k];
            let (start, content_end) = if whole && agree >= cursor && agree <= limit {
                let end = find_content(text, agree, limit, content).map_or(agree, |(_, e)| e);
                (agree, end)
            } else {
                // After the message before this turn, when it can be found.
                let from = match i.checked_sub(1).map(|j| messages[j].content.trim()) {
                    Some(prev) if !prev.is_empty() => {
                        text[cursor..limit].find(prev).map_or(cursor, |p| cursor + p + prev.len())
                    }
                    _ => cursor,
                };
                let at_content = find_content(text, from, limit, content);
                let parted = (agree >= from && agree <= limit).then_some(agree);
                let start = match (at_content, parted) {
                    (Some((s, _)), Some(a)) => s.min(a),
                    (Some((s, _)), None) => s,
                    (None, Some(a)) => a,
                    (None, None) => {
                        return Err(Error::Unmaskable(format!(
                            "cannot locate assistant turn {i}: the template renders the conversation before it \
                             differently from the whole, and the turn's content is not in the rendered text"
                        )));
                    }
                };
                found.by_content += 1;
                (start, at_content.map_or(start, |(_, e)| e.max(start)))
            };
            // The first stop token after the content, before the next message.
            let next = messages.get(i + 1).map(|m| m.content.trim()).filter(|c| !c.is_empty());
            let stop_limit = next.and_then(|c| text[content_end..limit].find(c)).map_or(limit, |p| content_end + p);
            let end = self
                .stops
                .iter()
                .filter_map(|s| text[content_end..stop_limit].find(s.as_str()).map(|p| content_end + p + s.len()))
                .min()
                .unwrap_or(content_end);
            if end == start && !content.trim().is_empty() {
                return Err(Error::Unmaskable(format!(
                    "cannot locate assistant turn {i}: its content is not in the rendered text and no end-of-turn \
                     token follows where it starts"
                )));
            }
            if end > start {
                found.spans.push((start, end));
            }
            cursor = end;
        }
        found.spans = merge_touching(found.spans);
        Ok(found)
    }
}

/// The texts that end an assistant turn for `model`, for
/// [`Encoder::with_stop_texts`]: its end-of-turn token, its end-of-sequence
/// token and its other stop tokens (`generation_config.json`'s).
pub fn stop_texts(model: &sam_models::BaseModel) -> Vec<String> {
    let sp = model.special_tokens();
    let mut out: Vec<String> = Vec::new();
    let named = sp.end_of_turn.iter().chain(&sp.eos).map(|t| t.text.clone());
    let by_id = sp.stop_ids.iter().filter_map(|&id| model.tokenizer()?.id_to_token(id));
    for t in named.chain(by_id) {
        if !t.is_empty() && !out.contains(&t) {
            out.push(t);
        }
    }
    out
}

/// Where `content` sits in `text[from..limit]`, as a template may write it:
/// as given at `from`, else trimmed, else without a leading reasoning block
/// (`…</think>`, which templates of reasoning models drop or rewrite), at
/// its first occurrence; byte range in `text`.
fn find_content(text: &str, from: usize, limit: usize, content: &str) -> Option<(usize, usize)> {
    let region = text.get(from..limit)?;
    if !content.is_empty() && region.starts_with(content) {
        return Some((from, from + content.len()));
    }
    let answer = content.rsplit_once("</think>").map(|(_, a)| a.trim());
    [Some(content.trim()), answer]
        .into_iter()
        .flatten()
        .filter(|t| !t.is_empty())
        .find_map(|t| region.find(t).map(|p| (from + p, from + p + t.len())))
}

/// Length in bytes of the longest common prefix of `a` and `b`, on a char
/// boundary of both.
fn common_prefix(a: &str, b: &str) -> usize {
    let n = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    (0..=n).rev().find(|&k| a.is_char_boundary(k) && b.is_char_boundary(k)).unwrap_or(0)
}

/// Spans in order, with spans that touch or overlap joined.
fn merge_touching(spans: Vec<(usize, usize)>) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
    for (s, e) in spans {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// Mask from byte spans: a token is trained on when it overlaps a span (an
/// empty-offset token, when its position lies in one).
pub fn mask_from_spans(offsets: &[(usize, usize)], spans: &[(usize, usize)]) -> Vec<bool> {
    let mut mask = Vec::with_capacity(offsets.len());
    let mut si = 0;
    for &(a, b) in offsets {
        while si < spans.len() && spans[si].1 <= a {
            si += 1;
        }
        let on = spans[si..].iter().take(2).any(|&(s, e)| if a == b { s <= a && a < e } else { a < e && b > s });
        mask.push(on);
    }
    mask
}

/// sam's estimate when no tokenizer exists: about four characters a token.
pub fn estimate_tokens(text: &str) -> usize {
    text.chars().count().div_ceil(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_overlap_rule() {
        let offs = [(0, 3), (3, 5), (5, 5), (5, 9), (9, 12)];
        assert_eq!(mask_from_spans(&offs, &[(4, 9)]), vec![false, true, true, true, false]);
        assert_eq!(mask_from_spans(&offs, &[(0, 3), (9, 12)]), vec![true, false, false, false, true]);
        assert_eq!(mask_from_spans(&offs, &[]), vec![false; 5]);
    }

    #[test]
    fn prefixes_and_merges() {
        assert_eq!(common_prefix("abcé", "abcè"), 3);
        assert_eq!(common_prefix("ab", "abc"), 2);
        assert_eq!(merge_touching(vec![(0, 3), (3, 5), (7, 9), (8, 12)]), vec![(0, 5), (7, 12)]);
    }

    #[test]
    fn estimate() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("abcde"), 2);
        assert_eq!(estimate_tokens("éééé"), 1);
    }
}
