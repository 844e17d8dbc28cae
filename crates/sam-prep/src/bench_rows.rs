//! The synthetic rows of the prep benchmark, shared by the criterion bench
//! and the `prep_bench` example: the same chats as the Python peer
//! (`python_prep_bench.py`), so both sides do the same work on the same rows.

use sam_schema::{Content, Example, Message};

/// `n` two-turn chats, identical to the Python peer's rows.
pub fn bench_examples(n: usize) -> Vec<Example> {
    (0..n)
        .map(|i| {
            let user = format!(
                "Question {i}: how does the function parse_{} handle an empty input in module m{}?",
                i % 97,
                i % 13
            );
            let answer = format!(
                "It returns an error early. Item {i} is checked, then the loop over {} fields runs; see line {}. ",
                i % 7,
                i % 400
            )
            .repeat(3);
            Example::new(Content::Chat { messages: vec![Message::user(user), Message::assistant(answer)] })
        })
        .collect()
}
