//! Every bound reached and answered as stated (SPEC 9).
