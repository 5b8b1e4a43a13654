-- One database per service that keeps records (each has its own migrations).
CREATE DATABASE registry;
CREATE DATABASE ingestion;
CREATE DATABASE training;
