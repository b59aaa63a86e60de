//go:build linux

package peer

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// selfSigned makes a self-signed ECDSA P-256 certificate for the DNS name
// and addresses, usable both as the server's leaf and as the client's root
// (IsCA, so crypto/tls accepts it in RootCAs). It returns PEM blocks.
func selfSigned(dnsName string, addrs []netip.Addr) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: dnsName, Organization: []string{"atoll test peer"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{dnsName},
	}
	for _, a := range addrs {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.IP(a.Unmap().AsSlice()))
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), nil
}

// loadOrMakeCert reuses dir's cert.pem/key.pem when they exist and cover
// dnsName and addrs (a restarted instance keeps its identity, so clients
// that trust it keep working), and makes new ones otherwise.
func loadOrMakeCert(dir, dnsName string, addrs []netip.Addr) (certPEM []byte, certPath, keyPath string, err error) {
	certPath, keyPath = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if c, err := os.ReadFile(certPath); err == nil && certCovers(c, dnsName, addrs) {
		if _, err := os.Stat(keyPath); err == nil {
			return c, certPath, keyPath, nil
		}
	}
	c, k, err := selfSigned(dnsName, addrs)
	if err != nil {
		return nil, "", "", fmt.Errorf("generate certificate: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, "", "", err
	}
	if err := errors.Join(os.WriteFile(keyPath, k, 0o600), os.WriteFile(certPath, c, 0o644)); err != nil {
		return nil, "", "", err
	}
	return c, certPath, keyPath, nil
}

// certCovers reports whether the PEM certificate is valid now and names
// dnsName and every address.
func certCovers(certPEM []byte, dnsName string, addrs []netip.Addr) bool {
	b, _ := pem.Decode(certPEM)
	if b == nil {
		return false
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil || time.Now().After(c.NotAfter.Add(-24*time.Hour)) {
		return false
	}
	if !slices.Contains(c.DNSNames, dnsName) {
		return false
	}
	for _, a := range addrs {
		if !slices.ContainsFunc(c.IPAddresses, func(ip net.IP) bool { return ip.Equal(net.IP(a.Unmap().AsSlice())) }) {
			return false
		}
	}
	return true
}
