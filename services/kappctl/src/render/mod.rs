//! Text for people, from views, Tables and objects. Pure: no IO, the time comes in, colour is
//! a [`style::Style`] passed in (so snapshot tests are plain text).

pub mod describe;
pub mod get;
pub mod status;
pub mod style;
