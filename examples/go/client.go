// Command tokenservice-go-client is an example tokenservice.v1 client in Go
// (grpc-go), built in GOPATH mode from Debian's packages: see run.sh.
//
// It checks the service's health, stores a user's token set, reads a token
// back by session id and by user and provider (and the id_token, when one was
// given), asks for a session that does not exist and shows the ErrorInfo
// reason of the NOT_FOUND, logs the session out, and checks that it is gone.
//
// Tokens come from the environment, never from argv (argv is visible in ps):
// ACCESS_TOKEN (required), REFRESH_TOKEN, ID_TOKEN, EXPIRES_IN (seconds); the
// provider id from PROVIDER and the user id from USER_ID, unless given as
// flags.
//
// Exit status: 0 when every step gave the expected answer, 1 otherwise, 2 for
// bad usage.
package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "tokenservice.example/gen/tokenservice/v1"
)

// callTimeout is each call's deadline. The service answers DEADLINE_EXCEEDED
// just before it when a refresh at the provider takes too long.
const callTimeout = 10 * time.Second

// errorDomain is the ErrorInfo domain of the service's own errors.
const errorDomain = "tokenservice.v1"

type options struct {
	target, user, provider             string
	accessToken, refreshToken, idToken string
	expiresIn                          int64
}

func parseOptions() (options, error) {
	var o options
	flag.StringVar(&o.target, "target", "127.0.0.1:50051", "host:port of the service's gRPC listener")
	flag.StringVar(&o.user, "user", envOr("USER_ID", "go-example-user"), "the user's id (default from USER_ID)")
	flag.StringVar(&o.provider, "provider", os.Getenv("PROVIDER"), "a provider id from the service's configuration (default from PROVIDER)")
	flag.Parse()
	if flag.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %q", flag.Args())
	}
	if o.provider == "" {
		return o, errors.New("PROVIDER (or -provider) must name a provider of the service")
	}
	o.accessToken = os.Getenv("ACCESS_TOKEN")
	o.refreshToken = os.Getenv("REFRESH_TOKEN")
	o.idToken = os.Getenv("ID_TOKEN")
	if o.accessToken == "" {
		return o, errors.New("ACCESS_TOKEN must be set in the environment")
	}
	if s := os.Getenv("EXPIRES_IN"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 0 {
			return o, errors.New("EXPIRES_IN must be a whole number of seconds")
		}
		o.expiresIn = n
	}
	return o, nil
}

func envOr(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

// preview shows enough of a token to recognise it, never the token.
func preview(secret string) string {
	return fmt.Sprintf("%d chars, starts '%s'", len(secret), head(secret))
}

// shortID shows the start of a session id, never all of it.
func shortID(id string) string {
	return fmt.Sprintf("%s… (%d chars)", head(id), len(id))
}

func head(s string) string {
	if len(s) > 8 {
		return s[:8]
	}
	return s
}

func when(ts *timestamppb.Timestamp) string {
	if ts == nil || ts.GetSeconds() == 0 {
		return "unknown"
	}
	return ts.AsTime().UTC().Format("2006-01-02T15:04:05Z")
}

// describe renders a failed call: code and message, and the ErrorInfo reason
// when the service sent one.
func describe(err error) string {
	st := status.Convert(err)
	text := fmt.Sprintf("%s: %s", codeName(st.Code()), st.Message())
	if info := errorInfo(st); info != nil {
		text += fmt.Sprintf(" (reason %s)", info.GetReason())
	}
	return text
}

// codeName spells a code as the gRPC specification does (NOT_FOUND, not
// NotFound), as the other examples print it.
func codeName(c codes.Code) string {
	var b strings.Builder
	prevLower := false
	for _, r := range c.String() {
		if unicode.IsUpper(r) && prevLower {
			b.WriteByte('_')
		}
		prevLower = unicode.IsLower(r)
		b.WriteRune(unicode.ToUpper(r))
	}
	return b.String()
}

// errorInfo is the google.rpc.ErrorInfo among a status's details (sent in
// the grpc-status-details-bin trailer), or nil.
func errorInfo(st *status.Status) *errdetails.ErrorInfo {
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info
		}
	}
	return nil
}

// client runs the steps; each one returns an error that says what was wrong.
type client struct {
	opts   options
	health healthpb.HealthClient
	tokens pb.TokenServiceClient
}

// call runs one RPC with its own deadline.
func call[Req, Resp any](step string, rpc func(context.Context, Req, ...grpc.CallOption) (Resp, error), req Req) (Resp, error) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	resp, err := rpc(ctx, req)
	if err != nil {
		return resp, fmt.Errorf("%s failed: %s", step, describe(err))
	}
	return resp, nil
}

// expectNotFound runs a GetToken that must answer NOT_FOUND with ErrorInfo
// reason SESSION_NOT_FOUND, and returns that reason.
func (c *client) expectNotFound(step string, req *pb.GetTokenRequest) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	_, err := c.tokens.GetToken(ctx, req)
	if err == nil {
		return "", fmt.Errorf("%s: expected NOT_FOUND, got a token", step)
	}
	st := status.Convert(err)
	if st.Code() != codes.NotFound {
		return "", fmt.Errorf("%s: expected NOT_FOUND, got %s", step, describe(err))
	}
	info := errorInfo(st)
	if info == nil {
		return "", fmt.Errorf("%s: NOT_FOUND without an ErrorInfo detail", step)
	}
	if info.GetReason() != "SESSION_NOT_FOUND" || info.GetDomain() != errorDomain {
		return "", fmt.Errorf("%s: expected ErrorInfo reason SESSION_NOT_FOUND in domain %s, got %q in %q",
			step, errorDomain, info.GetReason(), info.GetDomain())
	}
	return info.GetReason(), nil
}

func (c *client) run() error {
	o := c.opts

	// 0. Health: the server and the TokenService must both be SERVING.
	for _, service := range []string{"", "tokenservice.v1.TokenService"} {
		h, err := call("health Check", c.health.Check, &healthpb.HealthCheckRequest{Service: service})
		if err != nil {
			return err
		}
		if h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			return fmt.Errorf("health Check %q: %s, expected SERVING", service, h.GetStatus())
		}
	}
	fmt.Println("0. Health check: SERVING (server and tokenservice.v1.TokenService)")

	// 1. StoreSession: what an auth gateway does once, at login.
	stored, err := call("StoreSession", c.tokens.StoreSession, &pb.StoreSessionRequest{
		UserId:   o.user,
		Provider: o.provider,
		Tokens: &pb.TokenSet{
			AccessToken:  o.accessToken,
			RefreshToken: o.refreshToken,
			IdToken:      o.idToken,
			ExpiresIn:    o.expiresIn,
		},
	})
	if err != nil {
		return err
	}
	sessionID := stored.GetSessionId()
	if sessionID == "" {
		return errors.New("StoreSession returned no session id")
	}
	fmt.Printf("1. StoreSession: ok, session %s, access token expires %s\n", shortID(sessionID), when(stored.GetExpiresAt()))

	// 2. GetToken by session id: what any backend service does per request.
	got, err := call("GetToken (by session id)", c.tokens.GetToken,
		&pb.GetTokenRequest{UserId: o.user, SessionId: sessionID, MinValidSeconds: 30})
	if err != nil {
		return err
	}
	if got.GetToken() == "" {
		return errors.New("GetToken (by session id) returned no token")
	}
	origin := "refreshed by the service"
	if got.GetToken() == o.accessToken {
		origin = "the stored one"
	}
	fmt.Printf("2. GetToken (by session id): ok, %s token, %s, %s, expires %s\n",
		got.GetTokenType(), preview(got.GetToken()), origin, when(got.GetExpiresAt()))

	// 3. GetToken by user and provider: for a background job without a session id.
	byUser, err := call("GetToken (by user and provider)", c.tokens.GetToken,
		&pb.GetTokenRequest{UserId: o.user, Provider: o.provider})
	if err != nil {
		return err
	}
	if byUser.GetSessionId() != sessionID {
		return fmt.Errorf("GetToken (by user and provider) answered from another session, %s", shortID(byUser.GetSessionId()))
	}
	if byUser.GetToken() == "" {
		return errors.New("GetToken (by user and provider) returned no token")
	}
	fmt.Printf("3. GetToken (by user and provider): ok, session %s, %s\n", shortID(byUser.GetSessionId()), preview(byUser.GetToken()))

	// 4. The id_token, when the login produced one.
	if o.idToken != "" {
		gotID, err := call("GetToken (id_token)", c.tokens.GetToken,
			&pb.GetTokenRequest{UserId: o.user, SessionId: sessionID, Kind: pb.TokenKind_TOKEN_KIND_ID})
		if err != nil {
			return err
		}
		if gotID.GetToken() == "" || gotID.GetTokenType() != "N_A" {
			return fmt.Errorf("GetToken (id_token) returned token type %q", gotID.GetTokenType())
		}
		fmt.Printf("4. GetToken (id_token): ok, %s, expires %s\n", preview(gotID.GetToken()), when(gotID.GetExpiresAt()))
	} else {
		fmt.Println("4. GetToken (id_token): skipped, no ID_TOKEN given")
	}

	// 5. A session id the service never issued (well formed, 32 random bytes):
	// NOT_FOUND, and the ErrorInfo detail says why.
	unknown := make([]byte, 32)
	if _, err := rand.Read(unknown); err != nil {
		return fmt.Errorf("random session id: %v", err)
	}
	reason, err := c.expectNotFound("GetToken (unknown session)",
		&pb.GetTokenRequest{UserId: o.user, SessionId: base64.RawURLEncoding.EncodeToString(unknown)})
	if err != nil {
		return err
	}
	fmt.Printf("5. GetToken (unknown session): NOT_FOUND, as expected, ErrorInfo reason %s\n", reason)

	// 6. RevokeSession: logout, here and at the provider.
	if _, err := call("RevokeSession", c.tokens.RevokeSession,
		&pb.RevokeSessionRequest{UserId: o.user, SessionId: sessionID}); err != nil {
		return err
	}
	fmt.Println("6. RevokeSession: ok")

	// 7. The session is gone.
	reason, err = c.expectNotFound("GetToken after RevokeSession",
		&pb.GetTokenRequest{UserId: o.user, SessionId: sessionID})
	if err != nil {
		return err
	}
	fmt.Printf("7. GetToken after RevokeSession: NOT_FOUND, as expected, ErrorInfo reason %s\n", reason)
	return nil
}

func main() {
	opts, err := parseOptions()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	fmt.Printf("target %s, user %q, provider %q\n", opts.target, opts.user, opts.provider)

	// Plaintext, for a service on loopback or behind a mesh that provides
	// TLS. With TLS: grpc.WithTransportCredentials(credentials.NewClientTLSFromFile(caFile, "")).
	// Dial does not wait for the connection: each call's deadline covers it.
	conn, err := grpc.Dial(opts.target, grpc.WithInsecure(), grpc.WithDefaultCallOptions(grpc.ForceCodec(protoCodec{})))
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAILED: cannot set up a connection to %s: %v\n", opts.target, err)
		os.Exit(1)
	}
	defer conn.Close()

	c := &client{opts: opts, health: healthpb.NewHealthClient(conn), tokens: pb.NewTokenServiceClient(conn)}
	if err := c.run(); err != nil {
		fmt.Fprintf(os.Stderr, "FAILED: %v\n", err)
		conn.Close()
		os.Exit(1)
	}
	fmt.Println("all steps passed")
}
