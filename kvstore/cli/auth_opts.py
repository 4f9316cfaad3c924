"""The global security options of `kv`: --tls, --cert, --user, --password-file."""

from __future__ import annotations

from pathlib import Path

import click

from kvstore.client import Credentials, read_password_file


def security_options(fn):
    fn = click.option("--password-file", envvar="KV_PASSWORD_FILE", default=None,
                      type=click.Path(dir_okay=False, path_type=Path),
                      help="File whose first line is the password of --user. "
                           "[env KV_PASSWORD_FILE]")(fn)
    fn = click.option("--user", envvar="KV_USER", default=None,
                      help="Log in as this user (needs --password-file). [env KV_USER]")(fn)
    fn = click.option("--cert", envvar="KV_CERT", default=None, metavar="NAME",
                      help="Present the client certificate NAME.crt/NAME.key from the --tls "
                           "directory. [env KV_CERT]")(fn)
    fn = click.option("--tls", "tls_dir", envvar="KV_TLS", default=None,
                      type=click.Path(file_okay=False, path_type=Path),
                      help="Talk TLS, trusting the cluster CA in DIR/ca.crt (kv certs). "
                           "[env KV_TLS]")(fn)
    return fn


def credentials_from(tls_dir: Path | None = None, cert: str | None = None,
                     user: str | None = None, password_file: Path | None = None) -> Credentials:
    if user is not None and password_file is None:
        raise click.UsageError("--user needs --password-file (the password is never a flag)")
    password = read_password_file(password_file) if password_file is not None else None
    if password is not None and user is None:
        raise click.UsageError("--password-file needs --user")
    return Credentials(tls_dir=tls_dir, cert=cert, user=user, password=password)
