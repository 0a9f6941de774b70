//! The integration tests: one binary, the real daemon on 127.0.0.1:0, real git
//! repositories in temp folders, real processes.

#[path = "../support/mod.rs"]
mod support;

mod cli;
mod connections;
mod endpoints;
mod escalation;
mod files;
mod github;
mod gitops;
mod inputs;
mod interference;
mod jobs;
mod library;
mod mcp;
mod mcp_boundaries;
mod oauth;
mod openapi;
mod operate;
mod project;
mod prompts;
mod replicas;
mod review;
mod sandbox;
mod security;
mod seed;
mod sql;
mod style;
mod webhooks;
