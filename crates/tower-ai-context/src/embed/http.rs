//! [`HttpEmbedder`]: (being written)
