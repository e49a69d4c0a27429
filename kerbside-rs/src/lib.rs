//! kerbside
