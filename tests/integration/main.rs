//! integration

mod db;
