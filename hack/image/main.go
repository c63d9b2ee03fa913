// Command image assembles the aifactory operator image from scratch, without a
// Docker daemon or a base image: one layer holding the static /aifactory binary and
// the nonroot user (65532) in /etc/passwd and /etc/group, and a config that runs
// `/aifactory run` as that user.
//
// The same binary and flags always give the same digest: every timestamp is
// -created (SOURCE_DATE_EPOCH, else 0), the layer's entries are written in a fixed
// order with fixed owners, and gzip has no name or time in its header.
//
//	image -binary aifactory -ref ghcr.io/aifactory/aifactory:0.1.0 -version 0.1.0 \
//	      -revision $(git rev-parse HEAD) -tarball aifactory-0.1.0.tar [-oci-layout dir]
//
// The tarball is `docker save`'s format (docker load, kind load image-archive,
// ctr images import, crane push). Prints on stdout:
//
//	digest sha256:…    the manifest digest a registry shows after `crane push`
//	image-id sha256:…  the config digest (the IMAGE ID of `docker images`)
package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// The user the operator runs as; the chart's securityContext says the same.
const (
	uid  = 65532
	user = "nonroot"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func run() error {
	binary := flag.String("binary", "", "the static aifactory binary (required)")
	ref := flag.String("ref", "", "the image's name and tag, e.g. ghcr.io/aifactory/aifactory:0.1.0 (required)")
	version := flag.String("version", "", "label org.opencontainers.image.version (required)")
	revision := flag.String("revision", "", "label org.opencontainers.image.revision (the git commit)")
	source := flag.String("source", "", "label org.opencontainers.image.source (the repository's URL)")
	created := flag.Int64("created", sourceDateEpoch(), "creation time, seconds since 1970 (default $SOURCE_DATE_EPOCH, else 0)")
	tarballPath := flag.String("tarball", "", "write a `docker save` tarball here (required)")
	ociLayout := flag.String("oci-layout", "", "also write an OCI image layout directory here (replaced)")
	flag.Parse()
	if *binary == "" || *ref == "" || *version == "" || *tarballPath == "" {
		flag.Usage()
		return fmt.Errorf("-binary, -ref, -version and -tarball are required")
	}
	tag, err := name.NewTag(*ref, name.StrictValidation)
	if err != nil {
		return fmt.Errorf("-ref: %w", err)
	}
	when := time.Unix(*created, 0).UTC()

	layer, err := rootLayer(*binary, when)
	if err != nil {
		return err
	}
	labels := map[string]string{"org.opencontainers.image.version": *version}
	if *revision != "" {
		labels["org.opencontainers.image.revision"] = *revision
	}
	if *source != "" {
		labels["org.opencontainers.image.source"] = *source
	}
	img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{
		Architecture: "amd64",
		OS:           "linux",
		Created:      v1.Time{Time: when},
		// docker load and containerd know no other rootfs type.
		RootFS: v1.RootFS{Type: "layers"},
		Config: v1.Config{
			Entrypoint: []string{"/aifactory"},
			// The chart passes `run` and its flags as args, which replace Cmd.
			Cmd:          []string{"run"},
			User:         fmt.Sprintf("%d:%d", uid, uid),
			WorkingDir:   "/",
			ExposedPorts: map[string]struct{}{"8080/tcp": {}},
			Labels:       labels,
		},
	})
	if err != nil {
		return err
	}
	img, err = mutate.Append(img, mutate.Addendum{
		Layer: layer,
		History: v1.History{
			Created:   v1.Time{Time: when},
			CreatedBy: "hack/image.sh: /aifactory, /etc/passwd, /etc/group",
		},
	})
	if err != nil {
		return err
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	id, err := img.ConfigName()
	if err != nil {
		return err
	}

	// Written beside, then renamed: an interrupted build leaves no half tarball.
	tmp := *tarballPath + ".tmp"
	if err := tarball.WriteToFile(tmp, tag, img); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", *tarballPath, err)
	}
	// What `crane push` of the tarball would send must be what we computed.
	reread, err := tarball.ImageFromPath(tmp, &tag)
	if err != nil {
		return err
	}
	if got, err := reread.Digest(); err != nil || got != digest {
		os.Remove(tmp)
		return fmt.Errorf("the tarball reads back as %v (%v), not %v", got, err, digest)
	}
	if err := os.Rename(tmp, *tarballPath); err != nil {
		return err
	}

	if *ociLayout != "" {
		if err := os.RemoveAll(*ociLayout); err != nil {
			return err
		}
		path, err := layout.Write(*ociLayout, empty.Index)
		if err != nil {
			return err
		}
		if err := path.AppendImage(img, layout.WithAnnotations(map[string]string{
			"org.opencontainers.image.ref.name": tag.TagStr(),
		})); err != nil {
			return err
		}
	}
	fmt.Printf("digest %s\nimage-id %s\n", digest, id)
	return nil
}

func sourceDateEpoch() int64 {
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		if n, err := strconv.ParseInt(s, 10, 64); err == nil {
			return n
		}
	}
	return 0
}

// rootLayer is the image's only layer: /etc/passwd and /etc/group naming the
// nonroot user (tools and libc look names up there), and /aifactory, owned by root
// so the operator cannot rewrite itself.
func rootLayer(binary string, when time.Time) (v1.Layer, error) {
	exe, err := os.ReadFile(binary)
	if err != nil {
		return nil, err
	}
	passwd := fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\n%s:x:%d:%d:%s:/home/%s:/sbin/nologin\n", user, uid, uid, user, user)
	group := fmt.Sprintf("root:x:0:\n%s:x:%d:\n", user, uid)

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	entries := []struct {
		name string
		mode int64
		body []byte
	}{
		{"etc/", 0o755, nil},
		{"etc/group", 0o644, []byte(group)},
		{"etc/passwd", 0o644, []byte(passwd)},
		{"aifactory", 0o755, exe},
	}
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: e.mode, ModTime: when, Format: tar.FormatPAX}
		if e.body == nil {
			h.Typeflag = tar.TypeDir
		} else {
			h.Typeflag = tar.TypeReg
			h.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.body); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	}, tarball.WithCompressionLevel(gzip.BestCompression))
}
