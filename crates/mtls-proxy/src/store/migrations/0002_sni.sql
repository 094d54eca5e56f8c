-- The server name (SNI) the client asked for during the TLS handshake, for
-- requests and failed handshakes alike. Failed handshakes used to keep it in
-- `path`; move it where it belongs.
ALTER TABLE exchanges ADD COLUMN sni TEXT;
UPDATE exchanges SET sni = path, path = NULL WHERE kind = 'handshake';
