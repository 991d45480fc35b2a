//! Test and demo tooling, kept out of what applications link: throwaway PostgreSQL and Redis
//! servers ([`harness`]), the consistency harness behind `walbust chaos` ([`chaos`]) and the
//! scripted scenario behind `walbust demo` ([`demo`]).

pub mod chaos;
pub mod demo;
pub mod harness;
