//! From messages to token ids and loss masks.
//!
//! A conversation is rendered once with the chat template and tokenised once.
//! The loss mask comes from the text: for each assistant turn `i`, the
//! template rendered over `messages[..i]` with the generation prompt is a
//! prefix of the full text and ends where the turn's content begins; the turn
//! ends at the first end-of-turn token (`<|im_end|>`, …) after its content.
//! A token is trained on when any of its bytes fall in such a span, so every
//! assistant turn (not only the last) and its end-of-turn token count, and
//! system, user and template tokens do not. Templates whose earlier turns
//! change with later ones (the prefix property fails) fall back to finding
//! each assistant content in order.

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
}

/// Renders with a template and tokenises with a tokenizer.
#[derive(Debug)]
pub struct Encoder<'a> {
    template: &'a ChatTemplate,
    tokenizer: &'a Tokenizer,
    fast: Option<&'a FastBpe<'a>>,
    eot: Option<String>,
}

impl<'a> Encoder<'a> {
    /// An encoder; `end_of_turn` is the text of the token that closes a turn
    /// (`None`: a turn ends where its content ends).
    pub fn new(template: &'a ChatTemplate, tokenizer: &'a Tokenizer, end_of_turn: Option<String>) -> Self {
        Self { template, tokenizer, fast: None, eot: end_of_turn }
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
        let text = self.template.render(messages, false)?;
        let spans = self.assistant_spans(messages, &text)?;
        let (ids, offsets) = self.tokenize(&text)?;
        let mask = mask_from_spans(&offsets, &spans);
        let response_start = match spans.last() {
            Some(&(s, _)) => offsets.iter().position(|&(a, b)| b > s || a >= s).unwrap_or(ids.len()),
            None => ids.len(),
        };
        Ok(Encoded { ids, mask, response_start })
    }

    /// Tokenise raw text (completion examples): every token is trained on.
    pub fn encode_text(&self, text: &str) -> Result<Encoded, Error> {
        let (ids, _) = self.tokenize(text)?;
        Ok(Encoded { mask: vec![true; ids.len()], response_start: 0, ids })
    }

    /// Tokenise a preference pair: the prompt rendered with the generation
    /// prompt, and each response as the tokens that follow it in the full
    /// rendering, through the end-of-turn token.
    pub fn encode_pair(&self, prompt: &[Message], chosen: &str, rejected: &str) -> Result<EncodedPair, Error> {
        let prompt_text = self.template.render(prompt, true)?;
        let (prompt_ids, _) = self.tokenize(&prompt_text)?;
        let response = |answer: &str| -> Result<Vec<u32>, Error> {
            let mut msgs = prompt.to_vec();
            msgs.push(Message::assistant(answer));
            let enc = self.encode_chat(&msgs)?;
            // The response is the masked run after the prompt.
            let start = enc.response_start;
            let end = enc.mask[start..].iter().position(|m| !m).map_or(enc.ids.len(), |p| start + p);
            Ok(enc.ids[start..end].to_vec())
        };
        Ok(EncodedPair { chosen: response(chosen)?, rejected: response(rejected)?, prompt: prompt_ids })
    }

    /// Byte spans of `text` that belong to assistant turns (content and
    /// end-of-turn token).
    pub fn assistant_spans(&self, messages: &[Message], text: &str) -> Result<Vec<(usize, usize)>, Error> {
        let mut spans = Vec::new();
        let mut cursor = 0;
        for (i, m) in messages.iter().enumerate() {
            if m.role != Role::Assistant {
                continue;
            }
            let prefix = self.template.render(&messages[..i], true)?;
            let start = if text.starts_with(&prefix) && prefix.len() >= cursor {
                prefix.len()
            } else {
                // Fallback: the content's next occurrence.
                let needle = m.content.trim();
                match text[cursor..].find(needle) {
                    Some(p) if !needle.is_empty() => cursor + p,
                    _ => {
                        return Err(Error::Template(format!("cannot locate assistant turn {i} in the rendered text")));
                    }
                }
            };
            let rest = &text[start..];
            let content_end = if rest.starts_with(m.content.as_str()) {
                start + m.content.len()
            } else {
                let t = m.content.trim();
                match rest.find(t) {
                    Some(p) if !t.is_empty() => start + p + t.len(),
                    _ => start,
                }
            };
            let end = match &self.eot {
                Some(eot) => match text[content_end..].find(eot.as_str()) {
                    Some(p) => content_end + p + eot.len(),
                    None => content_end,
                },
                None => content_end,
            };
            spans.push((start, end));
            cursor = end;
        }
        Ok(spans)
    }
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
    fn estimate() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("abcde"), 2);
        assert_eq!(estimate_tokens("éééé"), 1);
    }
}
