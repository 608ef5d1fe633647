//! The server's durable mailbox. (Being written.)
