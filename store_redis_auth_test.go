package hostbreaker

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// startRedis runs redis-server with args on a free loopback port and
// returns the port; the server is killed when the test ends.
func startRedis(t *testing.T, args ...string) int {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("redis-server not on PATH")
		}
		t.Skip("!!! redis-server not on PATH — test NOT RUN !!!")
	}
	port := freePort(t)
	args = append([]string{"--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", t.TempDir(), "--loglevel", "warning"}, args...)
	for i, a := range args {
		if a == "PORT" {
			args[i] = strconv.Itoa(port)
		}
	}
	cmd := exec.Command("redis-server", args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for deadline := time.Now().Add(5 * time.Second); ; {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), 100*time.Millisecond)
		if err == nil {
			c.Close()
			return port
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server %v did not come up: %v", args, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// roundTrip writes a cooldown through s and reads it back.
func roundTrip(s Store) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	now := time.Now()
	if err := s.Put(ctx, Record{Host: "auth.test", Reason: ReasonManual, Until: now.Add(time.Minute), At: now}); err != nil {
		return err
	}
	recs, err := s.Records(ctx)
	if err != nil {
		return err
	}
	if len(recs) != 1 || recs[0].Host != "auth.test" {
		return fmt.Errorf("Records = %+v", recs)
	}
	return nil
}

func TestRedisAuthFromURL(t *testing.T) {
	port := startRedis(t, "--port", "PORT", "--requirepass", "s3cret")
	good, err := OpenStore(fmt.Sprintf("redis://:s3cret@127.0.0.1:%d/0?prefix=auth:", port))
	if err != nil {
		t.Fatal(err)
	}
	defer good.Close()
	if err := roundTrip(good); err != nil {
		t.Fatalf("with the password: %v", err)
	}
	bad, err := OpenStore(fmt.Sprintf("redis://:wrong@127.0.0.1:%d/0?prefix=auth:", port))
	if err != nil {
		t.Fatal(err) // opening never needs the server
	}
	defer bad.Close()
	if err := roundTrip(bad); err == nil {
		t.Fatal("a wrong password was accepted")
	}
}

func TestRedisTLSFromURL(t *testing.T) {
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writeSelfSignedCert(t, cert, key)
	port := startRedis(t, "--port", "0", "--tls-port", "PORT", "--tls-cert-file", cert,
		"--tls-key-file", key, "--tls-ca-cert-file", cert, "--tls-auth-clients", "no")
	// The test's certificate is self-signed: skip_verify is go-redis's
	// query option for that. Without it the certificate must verify.
	s, err := OpenStore(fmt.Sprintf("rediss://127.0.0.1:%d/0?prefix=tls:&skip_verify=true", port))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := roundTrip(s); err != nil {
		t.Fatalf("over TLS: %v", err)
	}
	strict, err := OpenStore(fmt.Sprintf("rediss://127.0.0.1:%d/0?prefix=tls:", port))
	if err != nil {
		t.Fatal(err)
	}
	defer strict.Close()
	if err := roundTrip(strict); err == nil {
		t.Fatal("an unverifiable certificate was accepted")
	}
	plain, err := OpenStore(fmt.Sprintf("redis://127.0.0.1:%d/0?prefix=tls:", port))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if err := roundTrip(plain); err == nil {
		t.Fatal("plain text was accepted by a TLS-only server")
	}
}

func writeSelfSignedCert(t *testing.T, certFile, keyFile string) {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
}
