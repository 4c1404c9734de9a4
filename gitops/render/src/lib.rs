//! kapp render
