mod npguard;
